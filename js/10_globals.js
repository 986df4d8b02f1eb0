// @ts-check
// The tenant-visible global scope: Web APIs from Deno's extension crates, wired the way
// deno_runtime's 98_global_scope_shared.js does, minus everything Deno-specific (no `Deno`,
// no file system, environment or process access).
import { core, internals } from "ext:core/mod.js";
import { op_outpost_log } from "ext:core/ops";
import { loadExt } from "ext:outpost/00_infra.js";
import { countedFetch, currentRequestId } from "ext:outpost/05_request_context.js";

export const webidl = loadExt("ext:deno_webidl/00_webidl.js");
export const event = loadExt("ext:deno_web/02_event.js");
const timers = loadExt("ext:deno_web/02_timers.js");
const consoleMod = loadExt("ext:deno_web/01_console.js");
const url = loadExt("ext:deno_web/00_url.js");
const urlPattern = loadExt("ext:deno_web/01_urlpattern.js");
const domException = loadExt("ext:deno_web/01_dom_exception.js");
const abortSignal = loadExt("ext:deno_web/03_abort_signal.js");
const base64 = loadExt("ext:deno_web/05_base64.js");
export const streams = loadExt("ext:deno_web/06_streams.js");
const encoding = loadExt("ext:deno_web/08_text_encoding.js");
const file = loadExt("ext:deno_web/09_file.js");
const fileReader = loadExt("ext:deno_web/10_filereader.js");
const messagePort = loadExt("ext:deno_web/13_message_port.js");
const compression = loadExt("ext:deno_web/14_compression.js");
export const performance = loadExt("ext:deno_web/15_performance.js");
const crypto = loadExt("ext:deno_crypto/00_crypto.js");
const headers = loadExt("ext:deno_fetch/20_headers.js");
const formData = loadExt("ext:deno_fetch/21_formdata.js");
export const body = loadExt("ext:deno_fetch/22_body.js");
export const request = loadExt("ext:deno_fetch/23_request.js");
export const response = loadExt("ext:deno_fetch/23_response.js");
const fetchMod = loadExt("ext:deno_fetch/26_fetch.js");
const globalInterfaces = loadExt("ext:deno_web/04_global_interfaces.js");
const location = loadExt("ext:deno_web/12_location.js");

/**
 * Hands this isolate's CryptoKey brand symbols to deno_crypto, which keeps them per thread
 * (runtime/isolate/src/enter.rs calls it when this isolate is entered after another).
 */
export function claimCryptoBrands() {
  crypto.Crypto.registerSymbols(webidl.brand, internals.kKeyObject);
}

/**
 * Gives the global scope the app's base URL (`location` in its outpost.toml), as Deno's
 * `--location` does: `location` (a WorkerLocation, as in a worker), and the base that
 * deno_fetch resolves relative URLs against. Apps without one have neither (as in Workers).
 * @param {string} href an absolute http(s) URL (the host validated it)
 */
export function setLocation(href) {
  location.setLocationHref(href);
  core.defineGlobalProperties(globalThis, {
    location: location.workerLocationDescriptor,
    WorkerLocation: location.workerLocationConstructorDescriptor,
  });
}

const nonEnum = core.propNonEnumerable;
const writable = core.propWritable;

/**
 * Console output goes to the host, which prefixes it with the app's name. Levels are
 * deno_web's Console levels, which the host names (`LOG_LEVELS` in extensions.rs).
 * @param {string} msg
 * @param {number} level
 */
function print(msg, level) {
  op_outpost_log(level > 3 ? 3 : level, msg, currentRequestId());
}

core.defineGlobalProperties(globalThis, {
  // events and errors
  Event: nonEnum(event.Event),
  EventTarget: nonEnum(event.EventTarget),
  CustomEvent: nonEnum(event.CustomEvent),
  ErrorEvent: nonEnum(event.ErrorEvent),
  MessageEvent: nonEnum(event.MessageEvent),
  ProgressEvent: nonEnum(event.ProgressEvent),
  PromiseRejectionEvent: nonEnum(event.PromiseRejectionEvent),
  DOMException: nonEnum(domException.DOMException),
  AbortController: nonEnum(abortSignal.AbortController),
  AbortSignal: nonEnum(abortSignal.AbortSignal),
  // URL
  URL: nonEnum(url.URL),
  URLSearchParams: nonEnum(url.URLSearchParams),
  URLPattern: nonEnum(urlPattern.URLPattern),
  // encoding
  TextEncoder: nonEnum(encoding.TextEncoder),
  TextDecoder: nonEnum(encoding.TextDecoder),
  TextEncoderStream: nonEnum(encoding.TextEncoderStream),
  TextDecoderStream: nonEnum(encoding.TextDecoderStream),
  atob: writable(base64.atob),
  btoa: writable(base64.btoa),
  // streams
  ReadableStream: nonEnum(streams.ReadableStream),
  ReadableStreamDefaultReader: nonEnum(streams.ReadableStreamDefaultReader),
  ReadableStreamBYOBReader: nonEnum(streams.ReadableStreamBYOBReader),
  ReadableStreamBYOBRequest: nonEnum(streams.ReadableStreamBYOBRequest),
  ReadableByteStreamController: nonEnum(streams.ReadableByteStreamController),
  ReadableStreamDefaultController: nonEnum(streams.ReadableStreamDefaultController),
  WritableStream: nonEnum(streams.WritableStream),
  WritableStreamDefaultWriter: nonEnum(streams.WritableStreamDefaultWriter),
  WritableStreamDefaultController: nonEnum(streams.WritableStreamDefaultController),
  TransformStream: nonEnum(streams.TransformStream),
  TransformStreamDefaultController: nonEnum(streams.TransformStreamDefaultController),
  ByteLengthQueuingStrategy: nonEnum(streams.ByteLengthQueuingStrategy),
  CountQueuingStrategy: nonEnum(streams.CountQueuingStrategy),
  CompressionStream: nonEnum(compression.CompressionStream),
  DecompressionStream: nonEnum(compression.DecompressionStream),
  // files
  Blob: nonEnum(file.Blob),
  File: nonEnum(file.File),
  FileReader: nonEnum(fileReader.FileReader),
  // structured clone and messaging
  structuredClone: writable(messagePort.structuredClone),
  MessageChannel: nonEnum(messagePort.MessageChannel),
  MessagePort: nonEnum(messagePort.MessagePort),
  // timers (WHATWG timers on deno_core's timer queue)
  setTimeout: writable(timers.setTimeout),
  setInterval: writable(timers.setInterval),
  clearTimeout: writable(timers.clearTimeout),
  clearInterval: writable(timers.clearInterval),
  // performance
  performance: writable(performance.performance),
  Performance: nonEnum(performance.Performance),
  PerformanceEntry: nonEnum(performance.PerformanceEntry),
  PerformanceMark: nonEnum(performance.PerformanceMark),
  PerformanceMeasure: nonEnum(performance.PerformanceMeasure),
  // crypto: a getter, because the cppgc-backed Crypto object cannot exist in a snapshot
  crypto: core.propGetterOnly(() => crypto.crypto),
  Crypto: nonEnum(crypto.Crypto),
  SubtleCrypto: nonEnum(crypto.SubtleCrypto),
  CryptoKey: nonEnum(crypto.CryptoKey),
  // fetch
  Headers: nonEnum(headers.Headers),
  FormData: nonEnum(formData.FormData),
  Request: nonEnum(request.Request),
  Response: nonEnum(response.Response),
  fetch: writable(countedFetch(fetchMod.fetch, request.Request)),
  // console
  console: nonEnum(new consoleMod.Console(print)),
  self: core.propGetterOnly(() => globalThis),
  [webidl.brand]: nonEnum(webidl.brand),
});

// The global object is an EventTarget (addEventListener("fetch", ...) and
// dispatchEvent(...) check their receiver's brand): a ServiceWorkerGlobalScope, as in
// workerd, whose handlers receive "fetch" events the way a service worker does.
class ServiceWorkerGlobalScope extends globalInterfaces.WorkerGlobalScope {
  constructor() {
    throw new TypeError("Illegal constructor");
  }

  get [Symbol.toStringTag]() {
    return "ServiceWorkerGlobalScope";
  }
}
core.defineGlobalProperties(globalThis, {
  WorkerGlobalScope: globalInterfaces.workerGlobalScopeConstructorDescriptor,
  ServiceWorkerGlobalScope: nonEnum(ServiceWorkerGlobalScope),
});
Object.setPrototypeOf(globalThis, ServiceWorkerGlobalScope.prototype);
event.setEventTargetData(globalThis);
event.saveGlobalThisReference(globalThis);
