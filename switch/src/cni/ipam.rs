//! Delegation to the IPAM plugin, as the spec says: the executable `ipam.type` found in a
//! directory of `CNI_PATH`, run with this plugin's environment (`CNI_COMMAND` set to the
//! delegated command) and the whole network config on stdin; its stdout is a result, or on
//! failure an error object passed through unchanged.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{code, CniError};

/// An IPAM plugin found in `CNI_PATH`.
#[derive(Debug, Clone)]
pub(super) struct Ipam {
    exe: PathBuf,
    name: String,
}

impl Ipam {
    /// The first `<dir>/<name>` of the colon-separated `cni_path` that is a file.
    pub(super) fn find(cni_path: &str, name: &str) -> Result<Ipam, CniError> {
        cni_path
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| PathBuf::from(d).join(name))
            .find(|p| p.is_file())
            .map(|exe| Ipam {
                exe,
                name: name.to_owned(),
            })
            .ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!("invalid network config: ipam.type: no plugin {name:?} in CNI_PATH"),
                    format!("CNI_PATH is {cni_path:?}"),
                )
            })
    }

    /// Runs the plugin for `command` with `config` on stdin; the parsed stdout on success
    /// (`Null` when it prints nothing, as DEL does).
    pub(super) fn exec(&self, command: &str, config: &[u8]) -> Result<Value, CniError> {
        let other = |what: String| {
            CniError::new(
                code::OTHER,
                format!("IPAM plugin {} {command}: {what}", self.name),
                self.exe.display().to_string(),
            )
        };
        let mut child = Command::new(&self.exe)
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| other(format!("cannot run it: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin that exits without reading makes this fail: its status tells why.
            let _ = stdin.write_all(config);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| other(format!("waiting for it: {e}")))?;
        let text = out.stdout.trim_ascii();
        if out.status.success() {
            if text.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(text)
                .map_err(|e| other(format!("its result is not JSON: {e}")));
        }
        // Its error object, passed through.
        let parsed: Option<Value> = serde_json::from_slice(text).ok();
        match parsed.as_ref().and_then(|v| {
            let code = u32::try_from(v.get("code")?.as_u64()?).ok()?;
            let msg = v.get("msg").and_then(Value::as_str).unwrap_or_default();
            let details = v.get("details").and_then(Value::as_str).unwrap_or_default();
            Some(CniError::new(code, msg, details))
        }) {
            Some(e) => Err(e),
            None => Err(other(format!(
                "failed ({}) without an error object: {}{}",
                out.status,
                String::from_utf8_lossy(text),
                String::from_utf8_lossy(out.stderr.trim_ascii()),
            ))),
        }
    }
}
