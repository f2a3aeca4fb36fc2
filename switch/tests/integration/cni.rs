//! The `podswitch-cni` plugin driven exactly as a container runtime drives it (environment +
//! network config on stdin), against the real daemon and Debian's real `host-local` IPAM
//! plugin from /usr/lib/cni. Needs root (namespaces, TAPs); see `#[root_test]`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use podswitch_dataplane::testutil::{root_test, unique};

use crate::common;

use common::{config, netns_add, run, tempdir, Daemon};

const PLUGIN: &str = env!("CARGO_BIN_EXE_podswitch-cni");
/// Where Debian's containernetworking-plugins put host-local (scripts/setup installs it);
/// the first, missing directory checks that every CNI_PATH entry is searched.
const CNI_PATH: &str = "/nonexistent/cni:/usr/lib/cni";

/// What the plugin printed and its exit status.
struct Answer {
    code: i32,
    json: Value,
    text: String,
}

/// Runs the plugin with `CNI_COMMAND=command`, the `CNI_*` variables `vars` (only those),
/// and `stdin`.
fn plugin(command: &str, vars: &[(&str, &str)], stdin: &str) -> Answer {
    let mut cmd = Command::new(PLUGIN);
    for k in [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_PATH",
        "CNI_ARGS",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("CNI_COMMAND", command);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run podswitch-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write config");
    let out = child.wait_with_output().expect("podswitch-cni exits");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
    };
    Answer {
        code: out.status.code().expect("exit code, not a signal"),
        json,
        text: format!("{text} (stderr: {})", String::from_utf8_lossy(&out.stderr)),
    }
}

/// A network config: the daemon at `control`, host-local with its data in `data_dir`, the
/// given `ranges` (none: filled in from the node).
fn netconf(version: &str, control: &Path, data_dir: &Path, ranges: Option<&str>) -> String {
    let mut ipam = json!({"type": "host-local", "dataDir": data_dir});
    if let Some(subnet) = ranges {
        ipam["ranges"] = json!([[{ "subnet": subnet }]]);
    }
    json!({
        "cniVersion": version,
        "name": "podnet",
        "type": "podswitch-cni",
        "control": control,
        "ipam": ipam,
        "dns": {"nameservers": ["10.96.0.10"]},
    })
    .to_string()
}

/// The addresses host-local holds for the test network.
fn reserved(data_dir: &Path) -> Vec<String> {
    common::host_local_reserved(&data_dir.join("podnet"))
}

/// A temp dir removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `ip netns del` on drop.
struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// The environment of one attachment.
fn vars<'a>(id: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![
        ("CNI_CONTAINERID", id),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", CNI_PATH),
    ];
    if !netns.is_empty() {
        v.push(("CNI_NETNS", netns));
    }
    v
}

/// A running daemon (pod CIDR 10.244.1.0/24) with its socket and temp dir.
fn daemon(tag: &str) -> (Daemon, PathBuf) {
    let dir = tempdir(tag);
    let control = dir.join("node.sock");
    let d = Daemon::start(
        &config("node-c", &control, &[]),
        control,
        dir.clone(),
        vec![],
    );
    (d, dir)
}

#[test]
fn version_needs_only_the_version_on_stdin() {
    let a = plugin("VERSION", &[], r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(a.code, 0, "{}", a.text);
    assert_eq!(
        a.json,
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]})
    );
    let a = plugin("VERSION", &[], r#"{"cniVersion":"0.4.0"}"#);
    assert_eq!(a.json["cniVersion"], "0.4.0", "{}", a.text);
}

#[test]
fn bad_configs_and_environments_are_the_spec_errors() {
    let dir = tempdir("cnibad");
    let _dir = Dir(dir.clone());
    let good = netconf("1.0.0", &dir.join("none.sock"), &dir, Some("10.244.1.0/24"));
    let env = vars("c-bad", "/run/netns/nothing");
    let mut conf: Value = serde_json::from_str(&good).expect("json");
    for (field, mutate) in [
        (
            "name",
            (|c: &mut Value| c["name"] = json!(7)) as fn(&mut Value),
        ),
        ("ipam", |c| {
            c.as_object_mut().expect("object").remove("ipam");
        }),
        ("ipam.type", |c| c["ipam"]["type"] = json!("")),
        ("control", |c| c["control"] = json!("relative.sock")),
        ("cniVersion", |c| {
            c.as_object_mut().expect("object").remove("cniVersion");
        }),
    ] {
        let mut c = conf.clone();
        mutate(&mut c);
        let a = plugin("ADD", &env, &c.to_string());
        assert_eq!(
            (a.code, a.json["code"].clone()),
            (1, json!(7)),
            "{field}: {}",
            a.text
        );
        let msg = a.json["msg"].as_str().expect("msg");
        assert!(
            msg.starts_with(&format!("invalid network config: {field}: ")),
            "{field}: {msg}"
        );
        assert!(a.json["details"].is_string(), "{}", a.text);
    }
    let a = plugin("ADD", &env, "{\"cniVersion\": ");
    assert_eq!(
        (a.code, a.json["code"].clone()),
        (1, json!(6)),
        "{}",
        a.text
    );
    conf["cniVersion"] = json!("0.1.0");
    let a = plugin("ADD", &env, &conf.to_string());
    assert_eq!(
        (a.code, a.json["code"].clone()),
        (1, json!(1)),
        "{}",
        a.text
    );

    let no_ifname: Vec<_> = env
        .iter()
        .filter(|(k, _)| *k != "CNI_IFNAME")
        .copied()
        .collect();
    let a = plugin("ADD", &no_ifname, &good);
    assert_eq!(
        (a.code, a.json["code"].clone()),
        (1, json!(4)),
        "{}",
        a.text
    );
    assert_eq!(a.json["msg"], "CNI_IFNAME is not set");
}

#[root_test]
fn add_check_del_through_the_daemon_and_host_local() {
    let (d, dir) = daemon("cniadd");
    let (na, nb) = (unique("cnia"), unique("cnib"));
    let _ns = Netns(vec![na.clone(), nb.clone()]);
    netns_add(&na);
    netns_add(&nb);
    let (pa, pb) = (format!("/run/netns/{na}"), format!("/run/netns/{nb}"));
    let (ida, idb) = (unique("containera"), unique("containerb"));
    let data = dir.join("ipam");
    // One config names its range, the other leaves it to the node (0.4.0, as older runtimes).
    let conf_a = netconf("1.0.0", &d.control, &data, Some("10.244.1.0/24"));
    let conf_b = netconf("0.4.0", &d.control, &data, None);

    let a = plugin("ADD", &vars(&ida, &pa), &conf_a);
    assert_eq!(a.code, 0, "{}", a.text);
    let ip_a = a.json["ips"][0]["address"]
        .as_str()
        .expect("address")
        .to_owned();
    assert!(
        ip_a.starts_with("10.244.1.") && ip_a.ends_with("/24"),
        "{}",
        a.text
    );
    assert_eq!(a.json["cniVersion"], "1.0.0");
    assert_eq!(a.json["interfaces"][0]["name"], "eth0");
    assert_eq!(a.json["interfaces"][0]["sandbox"], pa.as_str());
    assert!(
        a.json["interfaces"][0]["mac"]
            .as_str()
            .is_some_and(|m| m.len() == 17),
        "{}",
        a.text
    );
    assert_eq!(a.json["ips"][0]["gateway"], "10.244.1.1");
    assert_eq!(a.json["ips"][0]["interface"], 0);
    assert_eq!(
        a.json["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}])
    );
    assert_eq!(a.json["dns"], json!({"nameservers": ["10.96.0.10"]}));

    let b = plugin("ADD", &vars(&idb, &pb), &conf_b);
    assert_eq!(b.code, 0, "{}", b.text);
    assert_eq!(b.json["cniVersion"], "0.4.0");
    assert_eq!(b.json["ips"][0]["version"], "4", "{}", b.text);
    let ip_b = b.json["ips"][0]["address"]
        .as_str()
        .expect("address")
        .to_owned();
    let (ip_a, ip_b) = (
        ip_a.split('/').next().expect("ip").to_owned(),
        ip_b.split('/').next().expect("ip").to_owned(),
    );
    assert_ne!(ip_a, ip_b);
    assert_eq!(reserved(&data), {
        let mut v = vec![ip_a.clone(), ip_b.clone()];
        v.sort();
        v
    });

    // The interface is inside with its address; the pods reach each other through the switch.
    let addr = run(&["ip", "-n", &na, "-4", "addr", "show", "dev", "eth0"]);
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains(&format!("inet {ip_a}/24")),
        "{addr:?}"
    );
    let ping = run(&[
        "ip", "netns", "exec", &na, "ping", "-c", "2", "-i", "0.2", "-W", "2", &ip_b,
    ]);
    assert!(ping.status.success(), "{ping:?}");

    // CHECK with ADD's result passes; with a different address it fails clearly.
    let mut check = serde_json::from_str::<Value>(&conf_a).expect("json");
    check["prevResult"] = a.json.clone();
    let c = plugin("CHECK", &vars(&ida, &pa), &check.to_string());
    assert_eq!((c.code, c.json.clone()), (0, Value::Null), "{}", c.text);
    let mut wrong = check.clone();
    wrong["prevResult"]["ips"][0]["address"] = json!(format!("{ip_b}/24"));
    let c = plugin("CHECK", &vars(&ida, &pa), &wrong.to_string());
    assert_eq!(c.code, 1, "{}", c.text);
    assert!(c.json["code"].as_u64().is_some(), "{}", c.text);

    // Without its default route, pod b fails CHECK, saying what is missing.
    let mut check_b = serde_json::from_str::<Value>(&conf_b).expect("json");
    check_b["prevResult"] = b.json.clone();
    let c = plugin("CHECK", &vars(&idb, &pb), &check_b.to_string());
    assert_eq!(c.code, 0, "{}", c.text);
    let r = run(&["ip", "-n", &nb, "route", "del", "default"]);
    assert!(r.status.success(), "{r:?}");
    let c = plugin("CHECK", &vars(&idb, &pb), &check_b.to_string());
    assert_eq!(c.code, 1, "{}", c.text);
    assert!(
        c.json["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("no default route via 10.244.1.1 on eth0")),
        "{}",
        c.text
    );

    // DEL twice succeeds and releases the address.
    for _ in 0..2 {
        let del = plugin("DEL", &vars(&ida, &pa), &conf_a);
        assert_eq!(
            (del.code, del.json.clone()),
            (0, Value::Null),
            "{}",
            del.text
        );
    }
    assert_eq!(reserved(&data), vec![ip_b.clone()]);
    let ctl = d.ctl(&["pod", "list"]);
    assert!(
        !String::from_utf8_lossy(&ctl.stdout).contains(&ida),
        "{ctl:?}"
    );

    // DEL without CNI_NETNS succeeds; so does DEL of a container the daemon never knew.
    let del = plugin("DEL", &vars(&idb, ""), &conf_b);
    assert_eq!(del.code, 0, "{}", del.text);
    assert!(reserved(&data).is_empty(), "{:?}", reserved(&data));
    let del = plugin("DEL", &vars(&unique("never"), &pb), &conf_a);
    assert_eq!(del.code, 0, "{}", del.text);

    // STATUS: the daemon answers.
    let s = plugin("STATUS", &[], &conf_a);
    assert_eq!(s.code, 0, "{}", s.text);
}

#[root_test]
fn daemon_down_is_try_again_later_and_leaves_no_address() {
    let dir = tempdir("cnidown");
    let _dir = Dir(dir.clone());
    let ns = unique("cnidn");
    let _ns = Netns(vec![ns.clone()]);
    netns_add(&ns);
    let path = format!("/run/netns/{ns}");
    let data = dir.join("ipam");
    let conf = netconf(
        "1.0.0",
        &dir.join("absent.sock"),
        &data,
        Some("10.244.1.0/24"),
    );
    let id = unique("downc");

    let a = plugin("ADD", &vars(&id, &path), &conf);
    assert_eq!(
        (a.code, a.json["code"].clone()),
        (1, json!(11)),
        "{}",
        a.text
    );
    assert!(reserved(&data).is_empty(), "{:?}", reserved(&data));
    let link = run(&["ip", "-n", &ns, "link", "show", "eth0"]);
    assert!(!link.status.success(), "eth0 was made: {link:?}");

    // DEL: host-local still releases, then "try again later".
    let del = plugin("DEL", &vars(&id, &path), &conf);
    assert_eq!(
        (del.code, del.json["code"].clone()),
        (1, json!(11)),
        "{}",
        del.text
    );

    // STATUS: plugin not available.
    let s = plugin("STATUS", &[], &conf);
    assert_eq!(
        (s.code, s.json["code"].clone()),
        (1, json!(50)),
        "{}",
        s.text
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[root_test]
fn a_failure_after_ipam_releases_the_address() {
    let (d, dir) = daemon("cnifail");
    let data = dir.join("ipam");
    let conf = netconf("1.0.0", &d.control, &data, Some("10.244.1.0/24"));
    // The namespace does not exist: the daemon refuses after host-local gave an address.
    let gone = format!("/run/netns/{}", unique("cnigone"));
    let a = plugin("ADD", &vars(&unique("failc"), &gone), &conf);
    assert_eq!(a.code, 1, "{}", a.text);
    assert!(reserved(&data).is_empty(), "{:?}", reserved(&data));
    // A range outside the node's pod CIDR: refused, naming the field, nothing kept.
    let outside = netconf("1.0.0", &d.control, &data, Some("10.244.200.0/24"));
    let ns = unique("cnio");
    let _ns = Netns(vec![ns.clone()]);
    netns_add(&ns);
    let a = plugin(
        "ADD",
        &vars(&unique("outc"), &format!("/run/netns/{ns}")),
        &outside,
    );
    assert_eq!(
        (a.code, a.json["code"].clone()),
        (1, json!(7)),
        "{}",
        a.text
    );
    assert!(
        a.json["msg"]
            .as_str()
            .is_some_and(|m| m.contains("ipam.ranges")),
        "{}",
        a.text
    );
    assert!(reserved(&data).is_empty(), "{:?}", reserved(&data));
}
