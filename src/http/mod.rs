//! TEMPORARY until the HTTP module lands.
use crate::cli::CliError;
use crate::settings::Settings;
pub fn serve_cli(_settings: Settings, _bind: &str, _salvage: bool) -> Result<u8, CliError> {
    Err(CliError::Usage("serve: not built yet".into()))
}
