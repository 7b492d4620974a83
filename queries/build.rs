//! Embeds the dashboard's assets (`src/dashboard/assets/`) gzip-compressed:
//! writes each compressed file and a table of them (name, content type,
//! ETag) to `OUT_DIR`. `index.html` names the other assets with their
//! content hash (`app.js?v=…`), so they can be cached for good.

use std::io::Write;
use std::path::Path;

const ASSETS: [(&str, &str); 3] = [
    ("index.html", "text/html; charset=utf-8"),
    ("app.js", "text/javascript; charset=utf-8"),
    ("style.css", "text/css; charset=utf-8"),
];

/// FNV-1a, 64 bits: a content hash for ETags and cache-busting names.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

fn main() {
    let dir = Path::new("src/dashboard/assets");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let out = Path::new(&out);
    println!("cargo:rerun-if-changed=src/dashboard/assets");
    let mut hashes = Vec::new();
    let mut texts = Vec::new();
    for (name, _) in ASSETS {
        println!("cargo:rerun-if-changed=src/dashboard/assets/{name}");
        let text = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("reading dashboard asset {name}: {e}"));
        texts.push(text);
    }
    // Hashes of the assets index.html names, then index.html with them.
    for (i, (name, _)) in ASSETS.iter().enumerate().skip(1) {
        hashes.push((*name, format!("{:016x}", fnv(texts[i].as_bytes()))));
    }
    for (name, hash) in &hashes {
        texts[0] = texts[0].replace(
            &format!("\"/ui/{name}\""),
            &format!("\"/ui/{name}?v={hash}\""),
        );
    }
    let mut table = String::from("&[\n");
    for (i, (name, content_type)) in ASSETS.iter().enumerate() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(texts[i].as_bytes()).expect("gzip in memory");
        let gz = gz.finish().expect("gzip in memory");
        let file = out.join(format!("{name}.gz"));
        std::fs::write(&file, &gz).expect("writing to OUT_DIR");
        table.push_str(&format!(
            "    Asset {{ name: {name:?}, content_type: {content_type:?}, etag: \"\\\"{:016x}\\\"\", gzip: include_bytes!({:?}) }},\n",
            fnv(texts[i].as_bytes()),
            file.display().to_string(),
        ));
    }
    table.push_str("]\n");
    std::fs::write(out.join("dashboard_assets.rs"), table).expect("writing to OUT_DIR");
}
