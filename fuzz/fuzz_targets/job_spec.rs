//! The job-spec parser and everything a submission runs before the engine sees a job:
//! YAML/JSON into a spec, template expansion, each step kind's config check and the
//! sandbox's reach. Any input must end in a spec or an error, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weir_fuzz_support::job_spec(data);
});

mod weir_fuzz_support {
    include!("../support.rs");
}
