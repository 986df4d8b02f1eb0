//! Golden tests of the locked bundle format: every app under `tests/golden/apps/` locks to
//! exactly `tests/golden/expected/NAME.lock.json` (its canonical bytes, pretty-printed here
//! for review) with the id in `NAME.id`, or fails with exactly `NAME.error.txt`.
//!
//! After an intended change of the format or of an error message, regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p outpost-bundle --test golden` and review the diff.

use std::path::{Path, PathBuf};

use outpost_bundle::{load_app, Bundle, Lock};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden")
}

/// The path `load_app` is given for a case: the directory, or the one `.js` file of a
/// directory named `single-*`.
fn app_path(dir: &Path) -> PathBuf {
    let name = dir.file_name().unwrap().to_str().unwrap();
    if name.starts_with("single-") {
        let file = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "js"))
            .unwrap();
        return file;
    }
    dir.to_path_buf()
}

/// What a case produces, as (file name, text) pairs to compare with the expected ones.
fn outputs(name: &str, dir: &Path) -> Vec<(String, String)> {
    match load_app(&app_path(dir)) {
        Ok(bundle) => {
            let lock = bundle.lock();
            let bytes = lock.to_bytes();
            // The canonical bytes read back to the same lock and id.
            let again = Lock::from_bytes(&bytes).unwrap();
            assert_eq!(again, lock, "{name}: round trip");
            assert_eq!(again.id(), bundle.id, "{name}: id");
            // And the bundle rebuilds from its lock and blobs.
            let rebuilt = Bundle::from_lock(&lock, |digest| {
                bundle
                    .modules
                    .values()
                    .find(|m| m.sha256 == digest)
                    .map(|m| m.bytes.to_vec())
            })
            .unwrap();
            assert_eq!(rebuilt.id, bundle.id, "{name}: rebuilt");
            // Pretty-printed in the canonical field order, for review; the id pins the bytes.
            vec![
                (
                    format!("{name}.lock.json"),
                    serde_json::to_string_pretty(&lock).unwrap() + "\n",
                ),
                (format!("{name}.id"), format!("{}\n", bundle.id)),
            ]
        }
        Err(e) => {
            let text = e.to_string().replace(&dir.display().to_string(), "<app>");
            vec![(format!("{name}.error.txt"), text + "\n")]
        }
    }
}

#[test]
fn apps_lock_to_their_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let expected_dir = root().join("expected");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root().join("apps"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "{cases:?}");
    let mut mismatches = Vec::new();
    for dir in cases {
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        for (file, actual) in outputs(&name, &dir) {
            let path = expected_dir.join(&file);
            if update {
                std::fs::create_dir_all(&expected_dir).unwrap();
                std::fs::write(&path, &actual).unwrap();
                continue;
            }
            let expected = std::fs::read_to_string(&path)
                .unwrap_or_else(|_| format!("(no {} yet)", path.display()));
            if expected != actual {
                mismatches.push(format!(
                    "--- {file}\nexpected:\n{expected}\nactual:\n{actual}"
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "golden mismatches (UPDATE_GOLDEN=1 regenerates):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn a_corrupt_blob_is_refused() {
    let bundle = load_app(&root().join("apps/full")).unwrap();
    let lock = bundle.lock();
    let err = Bundle::from_lock(&lock, |digest| {
        let module = bundle.modules.values().find(|m| m.sha256 == digest)?;
        let mut bytes = module.bytes.to_vec();
        if bytes.len() > 3 {
            bytes[0] ^= 1;
        }
        Some(bytes)
    })
    .unwrap_err();
    assert!(err.to_string().contains("hash to"), "{err}");
    let err = Bundle::from_lock(&lock, |_| None).unwrap_err();
    assert!(err.to_string().contains("is missing"), "{err}");
}
