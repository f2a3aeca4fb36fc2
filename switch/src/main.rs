//! The `podswitch` command. Order 1 ships the library; the daemon (`podswitch run`) arrives with
//! TAP ports in Order 2.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-V") => println!("podswitch {}", env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!("usage: podswitch --version\n(the `run` daemon comes with TAP ports)");
            std::process::exit(2);
        }
    }
}
