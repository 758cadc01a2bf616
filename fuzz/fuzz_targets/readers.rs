//! The file readers: any bytes, named as each format (and as nothing, so detection
//! decides), opened and read to the end. Bad input must be a `DataError`, never a panic
//! or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weir_fuzz_support::readers(data);
});

mod weir_fuzz_support {
    include!("../support.rs");
}
