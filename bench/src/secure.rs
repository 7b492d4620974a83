//! `--secure-ab`: the same load on two fresh servers, plain and then with
//! TLS and a bearer token on every request, to price authentication and
//! encryption. The certificate comes from `openssl`, the token from
//! `tally token create`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// What a client needs to reach a secured server.
#[derive(Clone)]
pub struct Credentials {
    pub ca_pem: Vec<u8>,
    pub token: String,
}

/// A CA and a server certificate for 127.0.0.1 in `dir`: `(ca, cert, key)`.
pub fn certificates(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl")?;
        anyhow::ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=bench-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca)?;
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&req)?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "server.ext",
    ])?;
    Ok((
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    ))
}

/// An ingest token for the server of `data`.
pub fn ingest_token(bin: &Path, data: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args([
            "token", "create", "--name", "bench", "--role", "ingest", "--data",
        ])
        .arg(data)
        .output()
        .context("running tally token create")?;
    anyhow::ensure!(
        out.status.success(),
        "tally token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}
