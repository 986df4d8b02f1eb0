//! Link settings for the binaries: where the linker places the code that runs.
//!
//! The `outpost` binary has ~53 MB of text, and the code a node runs (start-up, serving,
//! the isolates) is scattered through it: each first touch of a page maps its 64 KiB
//! neighbourhood, so a node serving hello had ~25 MiB of text resident for the ~7 MB it
//! runs. `link-order.txt.gz` (written by `bench/link-order.sh` from a callgrind profile of
//! start-up and the four handlers of `bench/handlers/`) lists those functions hottest first;
//! lld places them side by side at the front of `.text`: ~10 MiB resident instead (bench/README.md,
//! "Text resident"). A name the linker does not find (a renamed function, a changed crate, a
//! debug build) is skipped: a stale list only loses effect.

use std::io::Read;
use std::path::PathBuf;

fn main() {
    // The flags are lld's; rustc links x86_64-unknown-linux-gnu with its own lld (since
    // 1.90). Other targets link as they would.
    if std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return;
    }
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let listed = manifest.join("link-order.txt.gz");
    println!("cargo:rerun-if-changed={}", listed.display());
    let mut order = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&listed).expect("gateway/link-order.txt.gz"))
        .read_to_string(&mut order)
        .expect("gateway/link-order.txt.gz is gzipped text");
    let file = out.join("link-order.txt");
    std::fs::write(&file, order).expect("writing the link order into OUT_DIR");
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        file.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    // C++ static constructors (`_GLOBAL__sub_I_*`, one per V8 source file) sit in
    // `.text.startup` input sections, which lld otherwise merges into `.text` beside their
    // files' code: ~80 scattered pages touched once at start. Grouped in a section of their
    // own (as GNU ld's default script does), also those the list above does not name yet.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,keep-text-section-prefix");
}
