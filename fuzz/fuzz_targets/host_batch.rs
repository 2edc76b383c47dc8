#![no_main]
//! The host's batch decoder (`POST /v1/batches` body): never panics, stays
//! within its limits, and whatever it accepts re-encodes to the same records;
//! every record inside that decodes is canonical.
use libfuzzer_sys::fuzz_target;
use tapstack_host::wire::{BatchRequest, MAX_BATCH_RECORDS};
use tapstack_protocol::codec::Codec;
use tapstack_protocol::record::{TransactionRecord, MAX_RECORD_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(records) = BatchRequest::decode(data) else {
        return;
    };
    assert!(records.len() <= MAX_BATCH_RECORDS);
    assert!(records.iter().all(|r| r.len() <= MAX_RECORD_LEN + 2));
    let again = BatchRequest::from_encoded(records.iter().map(Vec::as_slice)).to_json();
    assert_eq!(BatchRequest::decode(&again).ok().as_ref(), Some(&records));
    for r in &records {
        if let Ok(rec) = TransactionRecord::decode(r) {
            assert_eq!(&rec.to_bytes(), r);
        }
    }
});
