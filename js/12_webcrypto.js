// @ts-check
// Checks the WebCrypto spec asks for that deno_crypto (the cppgc SubtleCrypto of the pinned
// release) does not make yet. Each wraps a SubtleCrypto method: the original runs first, so
// every check it does keeps its order and error (SyntaxError for usages, ...); what it
// accepts and the spec refuses then becomes the spec's error. Found by the web-platform-tests
// (tests/wpt/): WebCryptoAPI/derive_bits_keys and import_export.
import { primordials } from "ext:core/mod.js";
import { loadExt } from "ext:outpost/00_infra.js";

const {
  ArrayBufferPrototypeGetByteLength,
  FunctionPrototypeCall,
  ObjectDefineProperty,
  ObjectGetOwnPropertyDescriptor,
  StringPrototypeToUpperCase,
} = primordials;

const { SubtleCrypto } = loadExt("ext:deno_crypto/00_crypto.js");
const { DOMException } = loadExt("ext:deno_web/01_dom_exception.js");

const proto = SubtleCrypto.prototype;

/**
 * The algorithm's name, upper-cased, as a caller gave it (a string or `{ name }`).
 * @param {any} algorithm
 * @returns {string}
 */
function nameOf(algorithm) {
  const name = typeof algorithm === "string" ? algorithm : algorithm?.name;
  return typeof name === "string" ? StringPrototypeToUpperCase(name) : "";
}

/**
 * Replaces `proto[name]` with `wrapper`, keeping the property's attributes; the wrapper is
 * given the original's `length`.
 * @param {string} name
 * @param {Function} wrapper
 */
function replace(name, wrapper) {
  const original = ObjectGetOwnPropertyDescriptor(proto, name);
  ObjectDefineProperty(wrapper, "length", {
    __proto__: null,
    value: original.value.length,
    configurable: true,
  });
  ObjectDefineProperty(proto, name, { __proto__: null, ...original, value: wrapper });
}

/** @param {string} message */
function dataError(message) {
  return new DOMException(message, "DataError");
}

// deriveBits: HKDF and PBKDF2 with a `length` of 0 are an OperationError (WebCrypto, 2024);
// deno_crypto answers an empty buffer.
const deriveBits = proto.deriveBits;
replace(
  "deriveBits",
  {
    async deriveBits(algorithm, baseKey, length = undefined) {
      const bits = await FunctionPrototypeCall(deriveBits, this, algorithm, baseKey, length);
      if (ArrayBufferPrototypeGetByteLength(bits) === 0) {
        const name = nameOf(algorithm);
        if (name === "HKDF" || name === "PBKDF2") {
          throw new DOMException(`${name}: the length must not be 0`, "OperationError");
        }
      }
      return bits;
    },
  }.deriveBits,
);

/** Bytes of each NIST curve's coordinates and private scalar. */
const EC_SIZES = { __proto__: null, "P-256": 32, "P-384": 48, "P-521": 66 };

/**
 * Bytes a base64url string decodes to (no padding, as JWK writes it).
 * @param {string} text
 */
function base64urlBytes(text) {
  return (text.length * 3) >> 2;
}

/**
 * The JWK checks deno_crypto skips for an EC key of `namedCurve`: `crv` present, and `x`,
 * `y` and `d` of the curve's size.
 * @param {any} jwk
 * @param {string} namedCurve
 */
function checkEcJwk(jwk, namedCurve) {
  if (jwk.crv === undefined) {
    throw dataError("the JWK has no 'crv' member");
  }
  const size = EC_SIZES[namedCurve];
  if (size === undefined) return;
  for (const member of ["x", "y", "d"]) {
    const value = jwk[member];
    if (typeof value === "string" && base64urlBytes(value) !== size) {
      throw dataError(`the JWK's '${member}' is not ${size} bytes long (${namedCurve})`);
    }
  }
}

/**
 * The JWK checks deno_crypto skips for a private OKP key: `x` present and the public key of
 * `d`. `key` is the private key deno_crypto made of it.
 * @param {SubtleCrypto} subtle
 * @param {any} jwk
 * @param {CryptoKey} key
 */
async function checkOkpPrivateJwk(subtle, jwk, key) {
  if (typeof jwk.x !== "string") {
    throw dataError("the private JWK has no 'x' member");
  }
  const publicKey = await subtle.getPublicKey(key, []);
  const derived = await subtle.exportKey("jwk", publicKey);
  if (derived.x !== jwk.x) {
    throw dataError("the JWK's 'x' is not the public key of its 'd'");
  }
}

const importKey = proto.importKey;
replace(
  "importKey",
  {
    async importKey(format, keyData, algorithm, extractable, keyUsages) {
      const key = await FunctionPrototypeCall(
        importKey,
        this,
        format,
        keyData,
        algorithm,
        extractable,
        keyUsages,
      );
      if (format === "jwk" && keyData !== null && typeof keyData === "object") {
        const name = key.algorithm.name;
        if (name === "ECDSA" || name === "ECDH") {
          checkEcJwk(keyData, key.algorithm.namedCurve);
        } else if (
          key.type === "private" &&
          (name === "Ed25519" || name === "X25519" || name === "X448")
        ) {
          await checkOkpPrivateJwk(this, keyData, key);
        }
      }
      return key;
    },
  }.importKey,
);
