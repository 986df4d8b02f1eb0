//! AES-GCM for what deno_crypto does not take: IVs other than 96 or 128 bits, and tags other
//! than 128 bits when decrypting. WebCrypto allows any IV length and tags of 32, 64, 96,
//! 104, 112, 120 or 128 bits; `js/12_webcrypto.js` sends those calls here. GCM as NIST
//! SP 800-38D defines it, built on RustCrypto's `aes` block cipher and `ghash`.

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use deno_core::op2;
use deno_error::JsErrorBox;
use ghash::universal_hash::UniversalHash;
use ghash::GHash;
use subtle::ConstantTimeEq;

const BLOCK: usize = 16;

/// The block cipher of a 128-, 192- or 256-bit key.
enum Cipher {
    Aes128(aes::Aes128),
    Aes192(aes::Aes192),
    Aes256(aes::Aes256),
}

impl Cipher {
    fn new(key: &[u8]) -> Result<Cipher, JsErrorBox> {
        Ok(match key.len() {
            16 => Cipher::Aes128(aes::Aes128::new(GenericArray::from_slice(key))),
            24 => Cipher::Aes192(aes::Aes192::new(GenericArray::from_slice(key))),
            32 => Cipher::Aes256(aes::Aes256::new(GenericArray::from_slice(key))),
            _ => return Err(operation_error("the AES key must be 128, 192 or 256 bits")),
        })
    }

    fn encrypt(&self, block: &mut [u8; BLOCK]) {
        let block = GenericArray::from_mut_slice(block);
        match self {
            Cipher::Aes128(c) => c.encrypt_block(block),
            Cipher::Aes192(c) => c.encrypt_block(block),
            Cipher::Aes256(c) => c.encrypt_block(block),
        }
    }
}

fn operation_error(message: &str) -> JsErrorBox {
    JsErrorBox::new("DOMExceptionOperationError", message.to_string())
}

/// One GCM invocation's key, hash key and pre-counter block `J0`.
struct Gcm {
    cipher: Cipher,
    hash_key: [u8; BLOCK],
    j0: [u8; BLOCK],
}

/// The 16-byte block of two lengths in bits, as GHASH ends its input with.
fn lengths(first: usize, second: usize) -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    block[..8].copy_from_slice(&((first as u64) * 8).to_be_bytes());
    block[8..].copy_from_slice(&((second as u64) * 8).to_be_bytes());
    block
}

impl Gcm {
    fn new(key: &[u8], iv: &[u8]) -> Result<Gcm, JsErrorBox> {
        if iv.is_empty() {
            return Err(operation_error("the AES-GCM iv must not be empty"));
        }
        let cipher = Cipher::new(key)?;
        let mut hash_key = [0u8; BLOCK];
        cipher.encrypt(&mut hash_key);
        let j0 = if iv.len() == 12 {
            let mut j0 = [0u8; BLOCK];
            j0[..12].copy_from_slice(iv);
            j0[15] = 1;
            j0
        } else {
            let mut ghash = GHash::new(GenericArray::from_slice(&hash_key));
            ghash.update_padded(iv);
            ghash.update_padded(&lengths(0, iv.len()));
            ghash.finalize().into()
        };
        Ok(Gcm {
            cipher,
            hash_key,
            j0,
        })
    }

    /// XORs `data` with the key stream that starts at `inc32(J0)`.
    fn apply_keystream(&self, data: &mut [u8]) {
        let start = u32::from_be_bytes(self.j0[12..].try_into().expect("4 bytes"));
        for (i, chunk) in data.chunks_mut(BLOCK).enumerate() {
            let mut counter = self.j0;
            let n = start.wrapping_add(1).wrapping_add(i as u32);
            counter[12..].copy_from_slice(&n.to_be_bytes());
            self.cipher.encrypt(&mut counter);
            for (byte, key) in chunk.iter_mut().zip(counter) {
                *byte ^= key;
            }
        }
    }

    /// The full 128-bit tag of `ciphertext` with `aad`.
    fn tag(&self, aad: &[u8], ciphertext: &[u8]) -> [u8; BLOCK] {
        let mut ghash = GHash::new(GenericArray::from_slice(&self.hash_key));
        ghash.update_padded(aad);
        ghash.update_padded(ciphertext);
        ghash.update_padded(&lengths(aad.len(), ciphertext.len()));
        let mut tag: [u8; BLOCK] = ghash.finalize().into();
        let mut mask = self.j0;
        self.cipher.encrypt(&mut mask);
        for (byte, m) in tag.iter_mut().zip(mask) {
            *byte ^= m;
        }
        tag
    }
}

fn tag_bytes(tag_bits: u32) -> Result<usize, JsErrorBox> {
    match tag_bits {
        32 | 64 | 96 | 104 | 112 | 120 | 128 => Ok(tag_bits as usize / 8),
        _ => Err(operation_error(
            "the AES-GCM tagLength must be 32, 64, 96, 104, 112, 120 or 128",
        )),
    }
}

/// Encrypts `data`: the ciphertext followed by the first `tag_bits` of the tag.
pub fn seal(
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
    tag_bits: u32,
    data: &[u8],
) -> Result<Vec<u8>, JsErrorBox> {
    let tag_len = tag_bytes(tag_bits)?;
    let gcm = Gcm::new(key, iv)?;
    let mut out = data.to_vec();
    gcm.apply_keystream(&mut out);
    let tag = gcm.tag(aad, &out);
    out.extend_from_slice(&tag[..tag_len]);
    Ok(out)
}

/// Decrypts `data` (ciphertext, then a tag of `tag_bits`): an OperationError unless the tag
/// matches.
pub fn open(
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
    tag_bits: u32,
    data: &[u8],
) -> Result<Vec<u8>, JsErrorBox> {
    let tag_len = tag_bytes(tag_bits)?;
    let gcm = Gcm::new(key, iv)?;
    if data.len() < tag_len {
        return Err(operation_error(
            "the AES-GCM ciphertext is shorter than its tag",
        ));
    }
    let (ciphertext, tag) = data.split_at(data.len() - tag_len);
    let expected = gcm.tag(aad, ciphertext);
    if !bool::from(expected[..tag_len].ct_eq(tag)) {
        return Err(operation_error(
            "decryption failed: the AES-GCM tag does not match",
        ));
    }
    let mut out = ciphertext.to_vec();
    gcm.apply_keystream(&mut out);
    Ok(out)
}

#[op2]
#[buffer]
pub fn op_outpost_aes_gcm_seal(
    #[buffer] key: &[u8],
    #[buffer] iv: &[u8],
    #[buffer] aad: &[u8],
    #[smi] tag_bits: u32,
    #[buffer] data: &[u8],
) -> Result<Vec<u8>, JsErrorBox> {
    seal(key, iv, aad, tag_bits, data)
}

#[op2]
#[buffer]
pub fn op_outpost_aes_gcm_open(
    #[buffer] key: &[u8],
    #[buffer] iv: &[u8],
    #[buffer] aad: &[u8],
    #[smi] tag_bits: u32,
    #[buffer] data: &[u8],
) -> Result<Vec<u8>, JsErrorBox> {
    open(key, iv, aad, tag_bits, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The GCM specification's test case 6 (AES-128, a 60-byte IV) and test case 2
    /// (96-bit IV), both with their published tags.
    #[test]
    fn matches_the_published_test_vectors() {
        let key = hex("feffe9928665731c6d6a8f9467308308");
        let plain = hex(concat!(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72",
            "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
        ));
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let iv = hex(concat!(
            "9313225df88406e555909c5aff5269aa6a7a9538534f7da1e4c303d2a318a728",
            "c3c0c95156809539fcf0e2429a6b525416aedbf5a0de6a57a637b39b"
        ));
        let sealed = seal(&key, &iv, &aad, 128, &plain).unwrap();
        let want = hex(concat!(
            "8ce24998625615b603a033aca13fb894be9112a5c3a211a8ba262a3cca7e2ca7",
            "01e4a9a4fba43c90ccdcb281d48c7c6fd62875d2aca417034c34aee5",
            "619cc5aefffe0bfa462af43c1699d050"
        ));
        assert_eq!(sealed, want);
        assert_eq!(open(&key, &iv, &aad, 128, &sealed).unwrap(), plain);

        let zero = [0u8; 16];
        let sealed = seal(&zero, &[0u8; 12], &[], 128, &zero).unwrap();
        assert_eq!(
            sealed,
            hex("0388dace60b6a392f328c2b971b2fe78ab6e47d42cec13bdf53a67b21257bddf")
        );
    }

    #[test]
    fn short_tags_are_prefixes_and_are_checked() {
        let key = [7u8; 32];
        let iv = [9u8; 32];
        let full = seal(&key, &iv, b"aad", 128, b"hello").unwrap();
        let short = seal(&key, &iv, b"aad", 32, b"hello").unwrap();
        assert_eq!(short, full[..5 + 4]);
        assert_eq!(open(&key, &iv, b"aad", 32, &short).unwrap(), b"hello");
        let mut forged = short.clone();
        forged[0] ^= 1;
        assert!(open(&key, &iv, b"aad", 32, &forged).is_err());
        assert!(open(&key, &iv, b"other", 32, &short).is_err());
        assert!(seal(&key, &iv, b"", 40, b"x").is_err());
    }
}
