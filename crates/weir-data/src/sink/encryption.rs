//! Parquet modular encryption of a sink's files (`encryption` on a Parquet sink): keys
//! read by reference when the step starts and for each input, turned into the `parquet`
//! crate's encryption properties (AES-GCM, encrypted footer). A wrong or missing key fails
//! the step at once, naming the reference, never the key.

use std::sync::Arc;

use base64::Engine;
use parquet::encryption::decrypt::FileDecryptionProperties;
use parquet::encryption::encrypt::FileEncryptionProperties;
use weir_core::dataset::EncryptionSpec;
use weir_core::secret::SecretRef;

use crate::DataError;

/// An AES key from its reference: 16, 24 or 32 bytes, written in hex or base64.
pub fn read_key(secret: &SecretRef) -> Result<Vec<u8>, DataError> {
    let text = weir_storage::read_secret(secret).map_err(|e| DataError::Config(format!("encryption key: {e}")))?;
    let text = String::from_utf8(text).map_err(|_| {
        DataError::Config(format!("encryption key in {} is not text (hex or base64)", secret.describe()))
    })?;
    decode_key(&text).map_err(|e| DataError::Config(format!("encryption key in {}: {e}", secret.describe())))
}

/// 16, 24 or 32 bytes from hex or base64 text.
pub fn decode_key(text: &str) -> Result<Vec<u8>, String> {
    let t = text.trim();
    let bytes = if t.len().is_multiple_of(2) && t.len() >= 32 && t.chars().all(|c| c.is_ascii_hexdigit()) {
        (0..t.len()).step_by(2).map(|i| u8::from_str_radix(&t[i..i + 2], 16)).collect::<Result<Vec<u8>, _>>().ok()
    } else {
        None
    };
    let bytes = match bytes {
        Some(b) => b,
        None => base64::engine::general_purpose::STANDARD.decode(t).map_err(|_| "not hex or base64".to_string())?,
    };
    if ![16, 24, 32].contains(&bytes.len()) {
        return Err(format!("an AES key is 16, 24 or 32 bytes, this one is {}", bytes.len()));
    }
    Ok(bytes)
}

/// The properties a sink's files are written with.
pub fn properties(spec: &EncryptionSpec) -> Result<Arc<FileEncryptionProperties>, DataError> {
    let mut b = FileEncryptionProperties::builder(read_key(&spec.key)?);
    if let Some(id) = &spec.key_id {
        b = b.with_footer_key_metadata(id.as_bytes().to_vec());
    }
    for (col, key) in &spec.column_keys {
        b = b.with_column_key(col, read_key(key)?);
    }
    Ok(b.build()?)
}

/// The properties a reader of those files needs (Weir's own reads, tests, tools).
pub fn decryption(spec: &EncryptionSpec) -> Result<Arc<FileDecryptionProperties>, DataError> {
    let mut b = FileDecryptionProperties::builder(read_key(&spec.key)?);
    for (col, key) in &spec.column_keys {
        b = b.with_column_key(col, read_key(key)?);
    }
    Ok(b.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_decode_from_hex_or_base64_and_wrong_sizes_are_named() {
        assert_eq!(decode_key(&"ab".repeat(16)).expect("hex"), vec![0xab; 16]);
        assert_eq!(decode_key("MDEyMzQ1Njc4OTAxMjM0NQ==").expect("b64"), b"0123456789012345".to_vec());
        assert!(decode_key("c2hvcnQ=").unwrap_err().contains("is 5"));
        assert!(decode_key("not a key!").unwrap_err().contains("hex or base64"));
    }
}
