// @ts-check
// The Workers Cache API: `caches.default` and `await caches.open(name)`, each a `Cache`
// whose `match`, `put` and `delete` work on the app's scope of the node's cache (the ops in
// runtime/isolate/src/cache_api.rs). Arguments are checked here, with workerd's errors.
import { core, primordials } from "ext:core/mod.js";
import {
  op_outpost_cache_delete,
  op_outpost_caches_delete,
  op_outpost_cache_keys,
  op_outpost_cache_match,
  op_outpost_cache_put,
} from "ext:core/ops";
import { request as requestMod, response as responseMod, streams } from "ext:outpost/10_globals.js";

const {
  ArrayPrototypeFilter,
  ArrayPrototypeMap,
  ArrayPrototypePush,
  Error,
  ObjectPrototypeIsPrototypeOf,
  String,
  StringPrototypeIncludes,
  Symbol,
  TypeError,
  Uint8Array,
} = primordials;

const { Request, RequestPrototype } = requestMod;
const { Response, ResponsePrototype, toInnerResponseForDenoServe, wireHeaderList } = responseMod;
const { ReadableStreamPrototype, readableStreamForRid, resourceForReadableStream } = streams;

/** Cache names are shorter than this many UTF-8 bytes (as in workerd). */
const NAME_LIMIT = 1024;
const constructing = Symbol("constructing");
const nameKey = Symbol("name");
const defaultKey = Symbol("default");
const encoder = new TextEncoder();

/**
 * The request a key stands for: the Request itself, or one made of a URL string.
 * @param {any} key
 * @returns {Request}
 */
function keyRequest(key) {
  if (ObjectPrototypeIsPrototypeOf(RequestPrototype, key)) {
    return key;
  }
  return new Request(key);
}

/**
 * Checks `CacheQueryOptions`; returns `ignoreMethod`.
 * @param {any} options
 * @returns {boolean}
 */
function ignoreMethod(options) {
  if (options === undefined || options === null) {
    return false;
  }
  for (const field of ["ignoreSearch", "ignoreVary", "cacheName"]) {
    if (options[field] !== undefined) {
      throw new Error(`The '${field}' field on 'CacheQueryOptions' is not implemented.`);
    }
  }
  return !!options.ignoreMethod;
}

/**
 * @param {Headers} headers
 * @returns {[string, string][]}
 */
function headerPairs(headers) {
  /** @type {[string, string][]} */
  const pairs = [];
  for (const { 0: name, 1: value } of headers) {
    ArrayPrototypePush(pairs, [name, value]);
  }
  return pairs;
}

class Cache {
  /**
   * @param {symbol} token
   * @param {string | null} name
   */
  constructor(token, name) {
    if (token !== constructing) {
      throw new TypeError("Illegal constructor");
    }
    this[nameKey] = name;
  }

  /**
   * The stored response for the request's URL while it is fresh, else undefined.
   * @param {any} request
   * @param {any} [options]
   */
  async match(request, options) {
    const any = ignoreMethod(options);
    const req = keyRequest(request);
    if (req.method !== "GET" && !any) {
      return undefined;
    }
    const found = await op_outpost_cache_match(
      this[nameKey] !== null,
      this[nameKey] ?? "",
      req.url,
      headerPairs(req.headers),
    );
    if (found === null) {
      return undefined;
    }
    const body = found.rid === null ? null : readableStreamForRid(found.rid);
    return new Response(body, { status: found.status, headers: found.headers });
  }

  /**
   * Stores `response` for the request's URL (when its headers allow a shared cache to);
   * reads its body whole.
   * @param {any} request
   * @param {any} response
   */
  async put(request, response) {
    const req = keyRequest(request);
    if (!ObjectPrototypeIsPrototypeOf(ResponsePrototype, response)) {
      throw new TypeError("Failed to execute 'put' on 'Cache': parameter 2 is not of type 'Response'.");
    }
    if (response.type === "error") {
      throw new TypeError("Cache is unable to store an error response");
    }
    if (req.method !== "GET") {
      throw new TypeError("Cannot cache response to non-GET request.");
    }
    if (response.status === 206) {
      throw new TypeError("Cannot cache response to a range request (206 Partial Content).");
    }
    const vary = response.headers.get("vary");
    if (vary !== null && StringPrototypeIncludes(vary, "*")) {
      throw new TypeError("Cannot cache response with 'Vary: *' header.");
    }
    if (response.status === 304) {
      // Not meaningful to cache (workerd ignores it too).
      return undefined;
    }
    if (response.bodyUsed) {
      throw new TypeError(
        "Body has already been used. It can only be used once. Use tee() first if you need to read it twice.",
      );
    }
    const inner = toInnerResponseForDenoServe(response);
    const headers = wireHeaderList(inner);
    /** @type {Uint8Array | null} */
    let bytes = null;
    /** @type {number | null} */
    let rid = null;
    if (inner.body !== null) {
      const source = inner.body.streamOrStatic;
      if (ObjectPrototypeIsPrototypeOf(ReadableStreamPrototype, source)) {
        if (source.locked) {
          throw new TypeError("the Response's body is locked");
        }
        rid = resourceForReadableStream(source, inner.body.length ?? undefined);
      } else {
        bytes = new Uint8Array(await response.arrayBuffer());
      }
    }
    await op_outpost_cache_put(
      this[nameKey] !== null,
      this[nameKey] ?? "",
      req.url,
      headerPairs(req.headers),
      response.status,
      headers,
      bytes,
      rid,
    );
    return undefined;
  }

  /**
   * Removes the stored response for the request's URL; whether there was one.
   * @param {any} request
   * @param {any} [options]
   */
  async delete(request, options) {
    const any = ignoreMethod(options);
    const req = keyRequest(request);
    if (req.method !== "GET" && !any) {
      return false;
    }
    return await op_outpost_cache_delete(this[nameKey] !== null, this[nameKey] ?? "", req.url);
  }

  /**
   * The requests (GET, by URL) the cache holds responses for, or those of `request`'s URL.
   * @param {any} [request]
   * @param {any} [options]
   */
  async keys(request = undefined, options = undefined) {
    let urls = op_outpost_cache_keys(this[nameKey] !== null, this[nameKey] ?? "");
    if (request !== undefined) {
      const any = ignoreMethod(options);
      const req = keyRequest(request);
      if (req.method !== "GET" && !any) {
        return [];
      }
      urls = ArrayPrototypeFilter(urls, (/** @type {string} */ url) => url === req.url);
    }
    return ArrayPrototypeMap(urls, (/** @type {string} */ url) => new Request(url));
  }
}

class CacheStorage {
  /** @param {symbol} token */
  constructor(token) {
    if (token !== constructing) {
      throw new TypeError("Illegal constructor");
    }
    this[defaultKey] = new Cache(constructing, null);
  }

  /** The app's default cache. */
  get default() {
    return this[defaultKey];
  }

  /**
   * The app's cache named `name` (separate from the default one and from other names).
   * @param {any} name
   */
  async open(name) {
    const text = String(name);
    if (encoder.encode(text).length >= NAME_LIMIT) {
      throw new TypeError("Cache name is too long.");
    }
    return new Cache(constructing, text);
  }

  /**
   * Removes the app's cache named `name` (every entry): whether it held any.
   * @param {any} name
   */
  async delete(name) {
    return op_outpost_caches_delete(String(name));
  }
}

const caches = new CacheStorage(constructing);

core.defineGlobalProperties(globalThis, {
  Cache: core.propNonEnumerable(Cache),
  CacheStorage: core.propNonEnumerable(CacheStorage),
  caches: core.propReadOnly(caches),
});
