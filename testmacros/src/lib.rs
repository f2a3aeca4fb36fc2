//! `#[root_test]`: declares a test that needs root (network namespaces, TAP devices, etcd,
//! podman), in one line instead of a prelude repeated in every test.
//!
//! ```text
//! #[root_test]
//! fn pods_ping_each_other() { /* runs as root */ }
//! ```
//!
//! expands to a `#[test]` that is marked ignored when the crate is built with
//! `PODSWITCH_SKIP_ROOT_TESTS=1` (the crate's build script sets the `skip_root_tests` cfg, so
//! the harness counts the test as ignored, not passed), and whose body first calls
//! `podswitch_dataplane::testutil::root_or_skip` (not root: fails saying why, or skips
//! visibly). Written without `syn`: the input is a plain `fn name() { ... }`, and the macro
//! only adds attributes and a statement at the start of the body.

#![forbid(unsafe_code)]

use proc_macro::{Delimiter, Group, TokenStream, TokenTree};

/// Marks a test that needs root; see the crate documentation.
#[proc_macro_attribute]
pub fn root_test(args: TokenStream, item: TokenStream) -> TokenStream {
    if !args.is_empty() {
        return error("#[root_test] takes no arguments");
    }
    let mut tokens: Vec<TokenTree> = item.into_iter().collect();
    let name = tokens.windows(2).find_map(|w| match (&w[0], &w[1]) {
        (TokenTree::Ident(f), TokenTree::Ident(name)) if f.to_string() == "fn" => {
            Some(name.to_string())
        }
        _ => None,
    });
    let Some(name) = name else {
        return error("#[root_test] goes on a function");
    };
    let Some(TokenTree::Group(body)) = tokens.last() else {
        return error("#[root_test] needs a function with a body");
    };
    if body.delimiter() != Delimiter::Brace {
        return error("#[root_test] needs a function with a body");
    }
    let guard: TokenStream =
        format!("if !::podswitch_dataplane::testutil::root_or_skip({name:?}) {{ return; }}")
            .parse()
            .expect("the guard is valid Rust");
    let mut stream = guard;
    stream.extend(body.stream());
    let mut new_body = Group::new(Delimiter::Brace, stream);
    new_body.set_span(body.span());
    let last = tokens.len() - 1;
    tokens[last] = TokenTree::Group(new_body);
    let mut out: TokenStream = "#[test] #[cfg_attr(skip_root_tests, ignore = \"needs root: PODSWITCH_SKIP_ROOT_TESTS=1 is set\")]"
        .parse()
        .expect("the attributes are valid Rust");
    out.extend(tokens);
    out
}

fn error(message: &str) -> TokenStream {
    format!("compile_error!({message:?});")
        .parse()
        .expect("compile_error! is valid Rust")
}
