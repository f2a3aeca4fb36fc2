//! `#[root_test]`: declares a test that needs root (network namespaces, TAP devices, etcd,
//! podman), in one line instead of a prelude repeated in every test, and runs it in both pod
//! interface modes.
//!
//! ```text
//! #[root_test]
//! fn pods_ping_each_other() { /* runs as root, once per mode */ }
//! #[root_test(tap_only = "counts the TAP's queues")]
//! fn tap_queues() { /* TAP mode only, and says why */ }
//! #[root_test(veth_only)]
//! fn fast_path_forwards() { /* veth mode only */ }
//! ```
//!
//! expands to the function under a hidden name and one `#[test]` per mode: `NAME` (TAP pods,
//! the default) and `NAME_veth` (`node.pod_interface = "veth"`). Each runs the body with
//! `podswitch_dataplane::testutil::pod_interface()` answering its mode on the test's thread;
//! the fixtures that start nodes read it. Each test is marked ignored when the crate is built
//! with `PODSWITCH_SKIP_ROOT_TESTS=1` (the crate's build script sets the `skip_root_tests` cfg,
//! so the harness counts the test as ignored, not passed), and first calls
//! `podswitch_dataplane::testutil::root_or_skip` (not root: fails saying why, or skips
//! visibly). Written without `syn`: the input is a plain `fn name() { ... }`, and the macro
//! only renames it and adds the test functions.

#![forbid(unsafe_code)]

use proc_macro::{Delimiter, Ident, TokenStream, TokenTree};

/// Which modes a root test runs in.
enum Modes {
    Both,
    TapOnly,
    VethOnly,
}

fn modes(args: TokenStream) -> Result<Modes, &'static str> {
    let args: Vec<TokenTree> = args.into_iter().collect();
    match args.as_slice() {
        [] => Ok(Modes::Both),
        [TokenTree::Ident(i)] if i.to_string() == "veth_only" => Ok(Modes::VethOnly),
        [TokenTree::Ident(i), TokenTree::Punct(eq), TokenTree::Literal(why)]
            if i.to_string() == "tap_only"
                && eq.as_char() == '='
                && why.to_string().len() > 2
                && why.to_string().starts_with('"') =>
        {
            Ok(Modes::TapOnly)
        }
        _ => Err("#[root_test] takes nothing, `veth_only`, or `tap_only = \"why\"`"),
    }
}

/// Marks a test that needs root; see the crate documentation.
#[proc_macro_attribute]
pub fn root_test(args: TokenStream, item: TokenStream) -> TokenStream {
    let modes = match modes(args) {
        Ok(m) => m,
        Err(e) => return error(e),
    };
    let mut tokens: Vec<TokenTree> = item.into_iter().collect();
    let name_at = tokens.windows(2).position(|w| {
        matches!((&w[0], &w[1]), (TokenTree::Ident(f), TokenTree::Ident(_)) if f.to_string() == "fn")
    });
    let Some(name_at) = name_at.map(|i| i + 1) else {
        return error("#[root_test] goes on a function");
    };
    let name = tokens[name_at].to_string();
    match tokens.last() {
        Some(TokenTree::Group(body)) if body.delimiter() == Delimiter::Brace => {}
        _ => return error("#[root_test] needs a function with a body"),
    }
    let body_name = format!("__root_test_body_{name}");
    let span = tokens[name_at].span();
    tokens[name_at] = TokenTree::Ident(Ident::new(&body_name, span));
    let mut out: TokenStream = "#[allow(non_snake_case)] #[doc(hidden)]"
        .parse()
        .expect("the attributes are valid Rust");
    out.extend(tokens);
    let variants: &[(&str, &str)] = match modes {
        Modes::Both => &[("", "tap"), ("_veth", "veth")],
        Modes::TapOnly => &[("", "tap")],
        Modes::VethOnly => &[("_veth", "veth")],
    };
    for (suffix, mode) in variants {
        let test = format!(
            "#[test] #[cfg_attr(skip_root_tests, ignore = \"needs root: PODSWITCH_SKIP_ROOT_TESTS=1 is set\")] \
             fn {name}{suffix}() {{ \
                 if !::podswitch_dataplane::testutil::root_or_skip(\"{name}{suffix}\") {{ return; }} \
                 ::podswitch_dataplane::testutil::in_pod_interface_mode({mode:?}, {body_name}); \
             }}"
        );
        match test.parse::<TokenStream>() {
            Ok(t) => out.extend(t),
            Err(_) => return error("#[root_test]: the generated test is not valid Rust"),
        }
    }
    out
}

fn error(message: &str) -> TokenStream {
    format!("compile_error!({message:?});")
        .parse()
        .expect("compile_error! is valid Rust")
}
