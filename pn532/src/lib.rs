//! The PN532's host interface (UM0701-02), written once for both ends: the
//! reader's native driver (host side) and the emulator's virtual chip
//! (chip side) use the same frame codec, command codes, status codes and
//! serial speeds. Pure: no IO, no clock.

pub mod frame;

/// Command codes (PN532 user manual UM0701-02, §7).
pub mod cmd {
    pub const DIAGNOSE: u8 = 0x00;
    pub const GET_FIRMWARE_VERSION: u8 = 0x02;
    pub const GET_GENERAL_STATUS: u8 = 0x04;
    pub const READ_REGISTER: u8 = 0x06;
    pub const WRITE_REGISTER: u8 = 0x08;
    pub const READ_GPIO: u8 = 0x0C;
    pub const WRITE_GPIO: u8 = 0x0E;
    pub const SET_SERIAL_BAUD_RATE: u8 = 0x10;
    pub const SET_PARAMETERS: u8 = 0x12;
    pub const SAM_CONFIGURATION: u8 = 0x14;
    pub const POWER_DOWN: u8 = 0x16;
    pub const RF_CONFIGURATION: u8 = 0x32;
    pub const IN_DATA_EXCHANGE: u8 = 0x40;
    pub const IN_COMMUNICATE_THRU: u8 = 0x42;
    pub const IN_DESELECT: u8 = 0x44;
    pub const IN_LIST_PASSIVE_TARGET: u8 = 0x4A;
    pub const IN_RELEASE: u8 = 0x52;
    pub const IN_SELECT: u8 = 0x54;
    pub const IN_AUTO_POLL: u8 = 0x60;
    pub const TG_GET_DATA: u8 = 0x86;
    pub const TG_INIT_AS_TARGET: u8 = 0x8C;
    pub const TG_SET_DATA: u8 = 0x8E;

    /// A name for logs.
    pub fn name(code: u8) -> &'static str {
        match code {
            DIAGNOSE => "Diagnose",
            GET_FIRMWARE_VERSION => "GetFirmwareVersion",
            GET_GENERAL_STATUS => "GetGeneralStatus",
            READ_REGISTER => "ReadRegister",
            WRITE_REGISTER => "WriteRegister",
            READ_GPIO => "ReadGPIO",
            WRITE_GPIO => "WriteGPIO",
            SET_SERIAL_BAUD_RATE => "SetSerialBaudRate",
            SET_PARAMETERS => "SetParameters",
            SAM_CONFIGURATION => "SAMConfiguration",
            POWER_DOWN => "PowerDown",
            RF_CONFIGURATION => "RFConfiguration",
            IN_DATA_EXCHANGE => "InDataExchange",
            IN_COMMUNICATE_THRU => "InCommunicateThru",
            IN_DESELECT => "InDeselect",
            IN_LIST_PASSIVE_TARGET => "InListPassiveTarget",
            IN_RELEASE => "InRelease",
            IN_SELECT => "InSelect",
            IN_AUTO_POLL => "InAutoPoll",
            TG_GET_DATA => "TgGetData",
            TG_INIT_AS_TARGET => "TgInitAsTarget",
            TG_SET_DATA => "TgSetData",
            _ => "unsupported",
        }
    }
}

/// Status byte values (UM0701-02, table "Error code list").
pub mod status {
    pub const OK: u8 = 0x00;
    /// The target has not answered.
    pub const TIMEOUT: u8 = 0x01;
    /// Internal buffer overflow.
    pub const BUFFER_OVERFLOW: u8 = 0x0E;
    /// Invalid parameter (range, format).
    pub const INVALID_PARAMETER: u8 = 0x10;
    /// The command is not acceptable in the current context (unknown target
    /// number, target not in the right state).
    pub const WRONG_CONTEXT: u8 = 0x27;
    /// The target was released (a later exchange with it).
    pub const RELEASED: u8 = 0x29;
    /// More Information bit of InDataExchange's status and Tg bytes.
    pub const MI: u8 = 0x40;
}

/// Serial speeds of SetSerialBaudRate's BR parameter.
pub const BAUD_RATES: [u32; 9] = [
    9_600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 921_600, 1_288_000,
];

/// Most data in one InDataExchange answer or command (the chip's buffer);
/// longer APDUs continue with the MI bit.
pub const MAX_EXCHANGE_DATA: usize = 262;

/// HSU wake-up: `55 55` then zeros, long enough for the chip to wake.
pub const WAKE_UP: [u8; 16] = [0x55, 0x55, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_command_has_a_name_and_speeds_follow_br() {
        for code in [
            cmd::DIAGNOSE,
            cmd::IN_DATA_EXCHANGE,
            cmd::IN_LIST_PASSIVE_TARGET,
            cmd::TG_INIT_AS_TARGET,
        ] {
            assert_ne!(cmd::name(code), "unsupported");
        }
        assert_eq!(cmd::name(0xFE), "unsupported");
        // BR 0x04 is the power-on 115 200 baud; 0x08 the fastest.
        assert_eq!(BAUD_RATES[4], 115_200);
        assert_eq!(BAUD_RATES[8], 1_288_000);
        assert!(BAUD_RATES.windows(2).all(|w| w[0] < w[1]));
    }
}
