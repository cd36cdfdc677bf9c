//! Manifests from a bundle: `Manifest::parse` over arbitrary bytes. What it
//! accepts must pass `check` and survive `to_json` unchanged, so a manifest
//! shipper writes reads back as the one it wrote.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shipper::bundle::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::parse(data) else {
        return;
    };
    assert_eq!(m.check(), Ok(()));
    assert_eq!(Manifest::parse(&m.to_json()), Ok(m));
});
