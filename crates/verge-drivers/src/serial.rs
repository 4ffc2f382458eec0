//! Serial lines: open a [`SerialConfig`] as an async byte stream (raw mode,
//! no flow control) with `serial2-tokio` (BSD-2-Clause OR Apache-2.0), for
//! Modbus RTU and DL/T 645 over serial.

use serial2_tokio::{CharSize, FlowControl, Parity, SerialPort, Settings, StopBits};

use crate::config::SerialConfig;
use crate::protocol::DriverError;

/// An open serial port: [`tokio::io::AsyncRead`] + [`tokio::io::AsyncWrite`].
pub type Port = SerialPort;

/// Open the line `cfg` describes; a failure is a
/// [`DriverError::Connection`] naming the device, so the runner retries it
/// with backoff.
pub fn open(cfg: &SerialConfig) -> Result<Port, DriverError> {
    let settings =
        settings(cfg).map_err(|e| DriverError::Connection(format!("{}: {e}", cfg.device)))?;
    SerialPort::open(&cfg.device, move |mut s: Settings| {
        s.set_raw();
        s.set_baud_rate(cfg.baud)?;
        s.set_char_size(settings.0);
        s.set_stop_bits(settings.1);
        s.set_parity(settings.2);
        s.set_flow_control(FlowControl::None);
        Ok(s)
    })
    .map_err(|e| DriverError::Connection(format!("{}: {e}", cfg.device)))
}

/// The line settings, checked (config validation checks them too).
fn settings(cfg: &SerialConfig) -> Result<(CharSize, StopBits, Parity), String> {
    let size = match cfg.data_bits {
        7 => CharSize::Bits7,
        8 => CharSize::Bits8,
        n => return Err(format!("data_bits {n}: must be 7 or 8")),
    };
    let stop = match cfg.stop_bits {
        1 => StopBits::One,
        2 => StopBits::Two,
        n => return Err(format!("stop_bits {n}: must be 1 or 2")),
    };
    let parity = match cfg.parity.as_str() {
        "none" => Parity::None,
        "even" => Parity::Even,
        "odd" => Parity::Odd,
        p => return Err(format!("parity {p:?}: must be none, even or odd")),
    };
    Ok((size, stop, parity))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(device: &str) -> SerialConfig {
        SerialConfig {
            device: device.into(),
            baud: 9600,
            parity: "even".into(),
            data_bits: 8,
            stop_bits: 1,
        }
    }

    #[test]
    fn a_missing_device_is_a_connection_error_naming_it() {
        let e = open(&line("/dev/verge-no-such-tty")).expect_err("no such device");
        assert!(e.is_connection(), "{e}");
        assert!(e.to_string().contains("/dev/verge-no-such-tty"), "{e}");
    }

    #[test]
    fn bad_settings_are_refused_before_opening() {
        let mut l = line("/dev/null");
        l.parity = "mark".into();
        let e = open(&l).expect_err("bad parity");
        assert!(e.to_string().contains("parity"), "{e}");
    }
}
