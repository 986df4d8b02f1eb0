// @ts-check
// Checks the WebCrypto spec asks for that deno_crypto (the cppgc SubtleCrypto of the pinned
// release) does not make yet. Each wraps a SubtleCrypto method: the original runs first, so
// every check it does keeps its order and error (SyntaxError for usages, ...); what it
// accepts and the spec refuses then becomes the spec's error. Found by the web-platform-tests
// (tests/wpt/): WebCryptoAPI/derive_bits_keys and import_export.
import { primordials } from "ext:core/mod.js";
import { op_outpost_aes_gcm_open, op_outpost_aes_gcm_seal } from "ext:core/ops";
import { loadExt } from "ext:outpost/00_infra.js";

const {
  ArrayBufferIsView,
  ArrayBufferPrototypeGetByteLength,
  ArrayBufferPrototypeSlice,
  ArrayPrototypeIncludes,
  FunctionPrototypeCall,
  ObjectDefineProperty,
  ObjectGetOwnPropertyDescriptor,
  ObjectPrototypeIsPrototypeOf,
  ReflectDeleteProperty,
  StringPrototypeToUpperCase,
  TypedArrayPrototypeGetBuffer,
  TypedArrayPrototypeGetByteLength,
  TypedArrayPrototypeGetByteOffset,
  TypeError,
  Uint8Array,
} = primordials;

const { CryptoKey, SubtleCrypto } = loadExt("ext:deno_crypto/00_crypto.js");
const { DOMException } = loadExt("ext:deno_web/01_dom_exception.js");

const proto = SubtleCrypto.prototype;

// deno_crypto puts its Node.js interop on the public class: `CryptoKey.exportNodeMaterial`
// hands out the bytes of any key, extractable or not, and `CryptoKey.importSync` makes keys
// outside SubtleCrypto. Tenants get neither; the AES-GCM fallback below keeps the first.
// (`fromCloneData` stays: structured clone of a CryptoKey calls it.)
const exportMaterial = CryptoKey.exportNodeMaterial;
ReflectDeleteProperty(CryptoKey, "exportNodeMaterial");
ReflectDeleteProperty(CryptoKey, "importSync");

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

/**
 * A BufferSource's bytes (a view of them, not a copy).
 * @param {any} source
 * @returns {Uint8Array}
 */
function bytesOf(source) {
  if (ArrayBufferIsView(source)) {
    return new Uint8Array(
      // @ts-ignore a DataView has these too
      TypedArrayPrototypeGetBuffer(source),
      TypedArrayPrototypeGetByteOffset(source),
      TypedArrayPrototypeGetByteLength(source),
    );
  }
  // An ArrayBuffer (a SharedArrayBuffer is refused by the view's constructor check below).
  try {
    ArrayBufferPrototypeGetByteLength(source);
  } catch {
    throw new TypeError("expected an ArrayBuffer or an ArrayBuffer view");
  }
  return new Uint8Array(source);
}

/**
 * AES-GCM parameters deno_crypto refuses though WebCrypto allows them (an IV other than 96
 * or 128 bits; to decrypt, a tag other than 128 bits): what `op` needs to do them itself,
 * or null to leave the call to deno_crypto (which also reports every error).
 * @param {any} algorithm
 * @param {any} key
 * @param {"encrypt" | "decrypt"} op
 */
function gcmFallback(algorithm, key, op) {
  if (nameOf(algorithm) !== "AES-GCM" || typeof algorithm !== "object") return null;
  if (!ObjectPrototypeIsPrototypeOf(CryptoKey.prototype, key)) return null;
  if (key.algorithm.name !== "AES-GCM" || !ArrayPrototypeIncludes(key.usages, op)) return null;
  let iv, aad, tagLength;
  try {
    iv = bytesOf(algorithm.iv);
    aad = algorithm.additionalData === undefined ? new Uint8Array(0) : bytesOf(algorithm.additionalData);
    tagLength = algorithm.tagLength === undefined ? 128 : algorithm.tagLength;
  } catch {
    return null;
  }
  if (typeof tagLength !== "number") return null;
  const ivBytes = TypedArrayPrototypeGetByteLength(iv);
  const deno = (ivBytes === 12 || ivBytes === 16) && (op === "encrypt" || tagLength === 128);
  if (deno) return null;
  return { iv, aad, tagLength };
}

/**
 * @param {Uint8Array} view the op's result
 * @returns {ArrayBuffer}
 */
function bufferOf(view) {
  const buffer = TypedArrayPrototypeGetBuffer(view);
  const offset = TypedArrayPrototypeGetByteOffset(view);
  const length = TypedArrayPrototypeGetByteLength(view);
  if (offset === 0 && ArrayBufferPrototypeGetByteLength(buffer) === length) return buffer;
  return ArrayBufferPrototypeSlice(buffer, offset, offset + length);
}

for (const [op, fn] of [["encrypt", op_outpost_aes_gcm_seal], ["decrypt", op_outpost_aes_gcm_open]]) {
  const original = proto[op];
  replace(
    op,
    {
      async [op](algorithm, key, data) {
        const gcm = gcmFallback(algorithm, key, /** @type {any} */ (op));
        if (gcm === null) {
          return await FunctionPrototypeCall(original, this, algorithm, key, data);
        }
        const material = FunctionPrototypeCall(exportMaterial, CryptoKey, key);
        return bufferOf(fn(material.data, gcm.iv, gcm.aad, gcm.tagLength, bytesOf(data)));
      },
    }[op],
  );
}
