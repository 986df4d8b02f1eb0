//! Makes the isolate's startup snapshot: the Web API globals of Deno's extension crates and
//! Outpost's own JS (`js/`), evaluated once here so that every isolate starts from them in
//! milliseconds. Made at build time, in this process, because making a snapshot sets V8 flags
//! (`--predictable`, a fixed random seed) that a serving process must not have.

#[path = "src/extensions.rs"]
#[allow(dead_code)]
mod extensions;

// What `extensions` records of each request (the pool's type, std only).
#[path = "../pool/src/timing.rs"]
#[allow(dead_code)]
mod timing;

// The prebuilt V8 archive is compiled against the system C++ library; this build script
// links V8 too.
#[link(name = "stdc++")]
unsafe extern "C" {}

fn main() {
    println!("cargo:rustc-link-lib=dylib=stdc++");
    println!("cargo:rerun-if-changed=src/extensions.rs");
    println!("cargo:rerun-if-changed=../pool/src/timing.rs");
    println!("cargo:rerun-if-changed=../../js");
    let output = deno_core::snapshot::create_snapshot(
        deno_core::snapshot::CreateSnapshotOptions {
            cargo_manifest_dir: env!("CARGO_MANIFEST_DIR"),
            startup_snapshot: None,
            skip_op_registration: false,
            extensions: extensions::extensions(),
            extension_transpiler: None,
            with_runtime_cb: None,
        },
        None,
    )
    .unwrap_or_else(|e| panic!("making the startup snapshot failed: {e}"));
    for path in &output.files_loaded_during_snapshot {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let out_dir = std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR");
    let path = std::path::Path::new(&out_dir).join("SNAPSHOT.bin");
    std::fs::write(&path, &output.output)
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
