//! How an XDP program runs on an interface.

use std::fmt;

/// How the program runs on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// In the driver, before the kernel allocates a socket buffer: fastest.
    Native,
    /// In the kernel's receive path; works on any interface, slower.
    Generic,
    /// Native where the driver supports it, else generic (and says so).
    Auto,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Native => "native",
            Mode::Generic => "generic",
            Mode::Auto => "auto",
        })
    }
}
