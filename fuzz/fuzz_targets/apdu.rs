#![no_main]
use libfuzzer_sys::fuzz_target;
use tapstack_protocol::apdu::{CommandView, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = CommandView::parse(data) {
        let cmd = view.to_owned();
        let bytes = cmd.to_bytes();
        let again = CommandView::parse(&bytes).expect("re-encoded command parses");
        assert_eq!(again.to_owned(), cmd);
    }
    if let Ok(r) = Response::parse(data) {
        assert_eq!(r.to_bytes(), data);
    }
});
