//! `podswitch-cni`: the CNI plugin of podswitch (see `podswitch::cni`). Reads the `CNI_*`
//! environment and the network config on stdin, prints the result or the spec's error object
//! on stdout.

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let env = podswitch::cni::Env::from_fn(|k| std::env::var(k).ok());
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => podswitch::cni::run(&env, &stdin),
        Err(e) => podswitch::cni::Outcome {
            stdout: format!(
                "{}\n",
                podswitch::cni::CniError::new(
                    podswitch::cni::code::DECODE,
                    "cannot read the network config from stdin",
                    e.to_string(),
                )
                .to_json(podswitch::cni::config::DEFAULT_VERSION)
            ),
            exit: 1,
        },
    };
    let mut out = std::io::stdout().lock();
    // Nothing else can be reported if stdout is gone.
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    ExitCode::from(outcome.exit)
}
