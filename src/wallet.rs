//! Loading the operator's hotkey from a Bittensor wallet file.
//!
//! Each way the file can be unusable gets its own one-line error naming the path and the fix, since
//! this is the first thing an operator switching from the Python miner will trip on.

use std::path::{Path, PathBuf};

use loosh_actors::settings::Hotkey;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum WalletError {
    #[error("hotkey file {0} not found: set WALLET_NAME/HOTKEY_NAME, or create it with `btcli wallet new_hotkey`")]
    Missing(PathBuf),
    #[error("hotkey file {0} cannot be read: {1}")]
    Unreadable(PathBuf, String),
    #[error("hotkey file {0} is encrypted; the miner needs an unencrypted hotkey (regenerate it with `btcli wallet regen_hotkey` without a password)")]
    Encrypted(PathBuf),
    #[error("hotkey file {0} is not valid JSON ({1}); restore it with `btcli wallet regen_hotkey`")]
    Malformed(PathBuf, String),
    #[error("hotkey file {0} has no usable secretSeed (0x + 64 hex characters); restore it with `btcli wallet regen_hotkey`")]
    NoSeed(PathBuf),
    #[error(
        "hotkey file {path}: secretSeed gives {derived} but the file says ss58Address {stated}; the file is damaged"
    )]
    Mismatch { path: PathBuf, derived: String, stated: String },
}

/// Reads `secretSeed` from a wallet hotkey file and checks it against `ss58Address` when present.
pub fn load_hotkey(path: &Path) -> Result<Hotkey, WalletError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(WalletError::Missing(path.into())),
        Err(e) => return Err(WalletError::Unreadable(path.into(), e.to_string())),
    };
    let text = String::from_utf8_lossy(&bytes);
    let head = text.trim_start();
    if head.starts_with("$NACL") || head.starts_with("gAAAAA") || head.starts_with("$ANSIBLE_VAULT") {
        return Err(WalletError::Encrypted(path.into()));
    }
    let json: serde_json::Value =
        serde_json::from_str(head).map_err(|e| WalletError::Malformed(path.into(), e.to_string()))?;
    let seed = json
        .get("secretSeed")
        .and_then(|s| s.as_str())
        .and_then(|s| hex::decode(s.trim_start_matches("0x")).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| WalletError::NoSeed(path.into()))?;
    let hotkey = Hotkey::from_seed(seed).map_err(|_| WalletError::NoSeed(path.into()))?;
    if let Some(stated) = json.get("ss58Address").and_then(|s| s.as_str()) {
        let same = loosh_actors::settings::ss58_decode(stated)
            .ok()
            .zip(loosh_actors::settings::ss58_decode(hotkey.ss58()).ok())
            .is_some_and(|(a, b)| a == b);
        if !same {
            return Err(WalletError::Mismatch {
                path: path.into(),
                derived: hotkey.ss58().into(),
                stated: stated.into(),
            });
        }
    }
    Ok(hotkey)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, body: &str) -> PathBuf {
        let p = dir.path().join("hot");
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn reads_a_plain_hotkey_and_names_each_failure() {
        let dir = tempfile::tempdir().unwrap();
        let seed = "0x1111111111111111111111111111111111111111111111111111111111111111";
        let p = write(
            &dir,
            &format!(r#"{{"secretSeed":"{seed}","ss58Address":"5DtDLm5rQHShDqojQpsvcN8tRXHVFaecfDoRet1SU6BFD9Fi"}}"#),
        );
        assert_eq!(load_hotkey(&p).unwrap().ss58(), "5DtDLm5rQHShDqojQpsvcN8tRXHVFaecfDoRet1SU6BFD9Fi");

        assert!(matches!(load_hotkey(&dir.path().join("none")), Err(WalletError::Missing(_))));
        assert!(matches!(load_hotkey(&write(&dir, "$NACL....")), Err(WalletError::Encrypted(_))));
        assert!(matches!(load_hotkey(&write(&dir, "{not json")), Err(WalletError::Malformed(..))));
        assert!(matches!(load_hotkey(&write(&dir, r#"{"secretSeed":"0x12"}"#)), Err(WalletError::NoSeed(_))));
        let wrong =
            format!(r#"{{"secretSeed":"{seed}","ss58Address":"5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"}}"#);
        assert!(matches!(load_hotkey(&write(&dir, &wrong)), Err(WalletError::Mismatch { .. })));
        let msg = load_hotkey(&write(&dir, "$NACL")).unwrap_err().to_string();
        assert!(msg.contains("hot") && msg.contains("encrypted"));
    }
}
