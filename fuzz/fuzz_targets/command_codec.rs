//! Log entries: any bytes decode to a command or an error, and a decoded command encodes to
//! bytes that decode to the same command.
#![no_main]

use crema::consensus::command::StampedCommand;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = StampedCommand::decode(data) {
        let encoded = command.encode();
        let again = StampedCommand::decode(&encoded).expect("an encoded command decodes");
        assert_eq!(again.encode(), encoded);
    }
});
