// @ts-check
// The bridge between the host and a tenant's handler: turns a request the host hands over
// into a `Request`, calls the module's `fetch(request, env, ctx)` (or dispatches a
// `FetchEvent` to service-worker style listeners) and sends the `Response` back through ops.
// Everything here is captured while the snapshot is made, so a tenant overwriting globals
// (`Response`, `Promise.prototype.then`, ...) cannot change how its responses are read.
import { core, primordials } from "ext:core/mod.js";
import {
  op_outpost_fail,
  op_outpost_log,
  op_outpost_respond_bytes,
  op_outpost_respond_fast_text,
  op_outpost_respond_stream,
  op_outpost_respond_text,
  op_outpost_wait_until,
} from "ext:core/ops";
import {
  body,
  event,
  request,
  response,
  setLocation,
  streams,
} from "ext:outpost/10_globals.js";
import {
  currentRequestId,
  joinedHeaderList,
  runInRequest,
  setSubrequestLimit,
} from "ext:outpost/05_request_context.js";

const {
  ArrayPrototypeFilter,
  ArrayPrototypeIndexOf,
  Error,
  FunctionPrototypeCall,
  ObjectPrototypeIsPrototypeOf,
  PromisePrototypeThen,
  PromiseResolve,
  ReflectApply,
  String,
  StringPrototypeIncludes,
  StringPrototypeStartsWith,
  Symbol,
  TypeError,
  TypedArrayPrototypeGetByteLength,
  TypedArrayPrototypeGetSymbolToStringTag,
} = primordials;

const { InnerBody } = body;
const { fromInnerRequest } = request;
const {
  ResponsePrototype,
  serveFastBodyKey,
  serveFastConsumedKey,
  serveFastContentTypeKey,
  serveFastHeaderKindKey,
  serveFastStatusKey,
  SERVE_FAST_HEADER_CONTENT_TYPE,
  SERVE_FAST_HEADER_DEFAULT_TEXT,
  toInnerResponseForDenoServe,
  wireHeaderList,
} = response;
const { ReadableStreamPrototype, readableStreamForRid, resourceForReadableStream } = streams;
const { Event, EventTarget, listenerCount } = event;
const { JSONParse } = primordials;

/**
 * The ops imported above are the ones the snapshot was made with, and V8 cannot serialize
 * a function with a fast-call overload: deno_core gives `core.ops` its fast functions only
 * when the first extension script is loaded at run time, for every op of every extension at
 * once (~1 ms). An isolate pays that once it has served `FAST_OPS_AFTER` requests (a cold
 * one never does); from then on the most common response is sent through the fast function
 * (no `FunctionCallbackInfo` to unpack) once V8 has optimized the caller. It is called from
 * a call site of its own: one that saw only the fast function is one V8 compiles to the
 * fast call, where a site that saw both calls the regular function.
 * @type {typeof op_outpost_respond_fast_text | undefined}
 */
let fastRespondText;
const FAST_OPS_AFTER = 1000;
let served = 0;

function useFastOps() {
  try {
    // The op behind `core.loadExtScript` (which answers from its own cache without it): the
    // script was evaluated while the snapshot was made, so only deno_core's upgrade runs.
    core.ops.op_load_ext_script("ext:deno_web/02_event.js");
    const fast = core.ops.op_outpost_respond_fast_text;
    if (typeof fast === "function") {
      fastRespondText = fast;
    }
  } catch {
    // The regular functions keep serving: no request fails for want of a fast call.
  }
}

const dispatchEvent = EventTarget.prototype.dispatchEvent;

/** Failure kinds, as `op_outpost_fail` understands them (set by `configure`). */
let FAIL_EXCEPTION = 0;
let FAIL_NOT_A_RESPONSE = 0;
/** The console level of errors (set by `configure`). */
let LEVEL_ERROR = 0;

const MODE_NONE = 0;
const MODE_MODULE = 1;
const MODE_SERVICE_WORKER = 2;

let mode = MODE_NONE;
/** @type {any} */
let handler = null;
/** @type {any} */
let env = {};

/**
 * Takes the isolate's configuration from the host: its base URL (`location`, if any), the
 * bindings every request sees as `env`, the subrequest limit, and the numbers the host uses
 * for failure kinds and console levels (the host defines them; they are not written here).
 * @param {string} configJson
 */
export function configure(configJson) {
  const config = JSONParse(configJson);
  env = config.vars;
  if (config.location != null) {
    setLocation(config.location);
  }
  setSubrequestLimit(config.subrequests);
  FAIL_EXCEPTION = ArrayPrototypeIndexOf(config.failureKinds, "exception");
  FAIL_NOT_A_RESPONSE = ArrayPrototypeIndexOf(config.failureKinds, "notAResponse");
  LEVEL_ERROR = ArrayPrototypeIndexOf(config.logLevels, "error");
}

/**
 * Chooses the handler after the main module evaluated. Returns null, or why the module
 * cannot handle requests.
 * @param {any} namespace the main module's namespace
 * @returns {string | null}
 */
export function setHandler(namespace) {
  const def = namespace.default;
  if (def !== null && (typeof def === "object" || typeof def === "function")) {
    if (typeof def.fetch === "function") {
      mode = MODE_MODULE;
      handler = def;
      return null;
    }
  }
  if (listenerCount(globalThis, "fetch") > 0) {
    mode = MODE_SERVICE_WORKER;
    return null;
  }
  if (def === undefined) {
    return "the main module has no default export and adds no \"fetch\" event listener: " +
      "add `export default { async fetch(request, env, ctx) { return new Response(\"...\"); } }`";
  }
  return "the main module's default export has no fetch() method: " +
    "export `{ async fetch(request, env, ctx) { ... } }`";
}

/**
 * @param {any} error
 * @returns {string}
 */
function describeError(error) {
  if (ObjectPrototypeIsPrototypeOf(Error.prototype, error) && typeof error.stack === "string") {
    return error.stack;
  }
  try {
    return String(error);
  } catch {
    return "exception";
  }
}

/**
 * @param {any} value
 * @returns {string}
 */
function describeValue(value) {
  if (value === undefined) return "undefined";
  if (value === null) return "null";
  if (typeof value === "object" || typeof value === "function") {
    const name = value?.constructor?.name;
    if (typeof name !== "string" || name === "") return "an object";
    return `${StringPrototypeIncludes("AEIOUaeiou", name[0]) ? "an" : "a"} ${name} object`;
  }
  return `a ${typeof value}`;
}

/**
 * @param {number} id
 * @param {any} error
 */
function fail(id, error) {
  op_outpost_fail(id, FAIL_EXCEPTION, `Uncaught ${describeError(error)}`);
}

/**
 * @param {string} text
 */
function logError(text) {
  op_outpost_log(LEVEL_ERROR, text + "\n", currentRequestId());
}

/** `ctx.waitUntil` promises not yet settled in this isolate (the host is told each change). */
let waitUntilPending = 0;

/** The per-request `ctx` of module workers. */
class ExecutionContext {
  /**
   * Keeps the request's work alive after the response was sent.
   * @param {any} promise
   */
  waitUntil(promise) {
    const settled = PromiseResolve(promise);
    op_outpost_wait_until(++waitUntilPending);
    PromisePrototypeThen(
      settled,
      () => {
        op_outpost_wait_until(--waitUntilPending);
      },
      (error) => {
        op_outpost_wait_until(--waitUntilPending);
        logError(`Uncaught (in waitUntil) ${describeError(error)}`);
      },
    );
  }

  /** Accepted for compatibility; Outpost has no origin to fall back to. */
  passThroughOnException() {}
}

const kRespondWith = Symbol("respondWith");

/** The event service-worker style scripts receive: `addEventListener("fetch", ...)`. */
class FetchEvent extends Event {
  /** @type {any} */
  #request;
  /** @type {ExecutionContext} */
  #ctx;
  /** @type {any} */
  [kRespondWith] = undefined;

  /**
   * @param {any} req
   * @param {ExecutionContext} ctx
   */
  constructor(req, ctx) {
    super("fetch", { cancelable: true });
    this.#request = req;
    this.#ctx = ctx;
  }

  get request() {
    return this.#request;
  }

  /** @param {any} result a Response or a promise of one */
  respondWith(result) {
    if (this[kRespondWith] !== undefined) {
      throw new TypeError("respondWith() was already called for this event");
    }
    this[kRespondWith] = result;
    this.stopImmediatePropagation();
  }

  /** @param {any} promise */
  waitUntil(promise) {
    this.#ctx.waitUntil(promise);
  }

  passThroughOnException() {}
}

/**
 * The inner request (deno_fetch's InnerRequest shape) of an incoming request. A class, so
 * that every request shares one hidden class; headers become a list only when read.
 */
class IncomingInnerRequest {
  /**
   * @type {string | null} every name and value followed by a NUL, until headerList is read
   */
  #joinedHeaders;

  /**
   * @param {string} method
   * @param {string} url
   * @param {string} joinedHeaders
   * @param {any} body an InnerBody or null
   */
  constructor(method, url, joinedHeaders, body) {
    this.method = method;
    this.#joinedHeaders = joinedHeaders;
    /** @type {[string, string][] | null} */
    this.headerListInner = null;
    this.body = body;
    this.redirectMode = "follow";
    this.redirectCount = 0;
    this.urlList = [() => url];
    this.urlListProcessed = [url];
    this.clientRid = null;
    this.blobUrlEntry = null;
  }

  get headerList() {
    if (this.headerListInner === null) {
      this.headerListInner = joinedHeaderList(this.#joinedHeaders ?? "");
      this.#joinedHeaders = null;
    }
    return this.headerListInner;
  }

  set headerList(value) {
    this.headerListInner = value;
    this.#joinedHeaders = null;
  }

  url() {
    return this.currentUrlAt(0);
  }

  currentUrl() {
    return this.currentUrlAt(this.urlList.length - 1);
  }

  /** @param {number} index */
  currentUrlAt(index) {
    if (this.urlListProcessed[index] === undefined) {
      this.urlListProcessed[index] = this.urlList[index]();
    }
    return this.urlListProcessed[index];
  }
}

/**
 * Handles one request: called by the host, answers through ops (possibly later).
 * @param {number} id
 * @param {number | string} method an index into `METHODS`, or the method itself
 * @param {string} url
 * @param {string} headers every name and value followed by a NUL
 * @param {number | Uint8Array | string | null} body the resource streaming the request
 *   body, the body itself when it was received whole (as the text it decodes to when it is
 *   declared as text and is UTF-8), or null
 * @param {string | null} traceparent
 * @param {string | null} tracestate
 * @param {number | undefined} bodyLength the byte length of a body passed as text
 */
export function dispatch(
  id,
  method,
  url,
  headers,
  body,
  traceparent,
  tracestate,
  bodyLength,
) {
  if (++served === FAST_OPS_AFTER) {
    useFastOps();
  }
  runInRequest(
    id,
    headers,
    traceparent,
    tracestate,
    () => handle(id, method, url, headers, body, bodyLength),
  );
}

/**
 * A body received whole: read by `json()`, `text()`, ... without a stream; `request.body`
 * makes one from it when asked. deno_fetch's bodies hold text as they hold bytes.
 * @param {Uint8Array | string} whole
 * @param {number | undefined} bodyLength the byte length of text
 */
function wholeBody(whole, bodyLength) {
  const inner = new InnerBody({ body: whole, consumed: false });
  inner.length = typeof whole === "string" ? bodyLength : TypedArrayPrototypeGetByteLength(whole);
  return inner;
}

/**
 * The methods the host passes by number (`exchange::METHODS` in the isolate crate, in the
 * same order): constant strings instead of a new string per request.
 */
const METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];

/**
 * @param {number} id
 * @param {number | string} method an index into `METHODS`, or the method itself
 * @param {string} url
 * @param {string} headers
 * @param {number | Uint8Array | string | null} body
 * @param {number | undefined} bodyLength
 */
function handle(id, method, url, headers, body, bodyLength) {
  if (typeof method === "number") {
    method = METHODS[method];
  }
  let result;
  try {
    const reqBody = body === null
      ? null
      : typeof body === "number"
      ? new InnerBody(readableStreamForRid(body))
      : wholeBody(body, bodyLength);
    const inner = new IncomingInnerRequest(method, url, headers, reqBody);
    const req = fromInnerRequest(inner, "immutable");
    const ctx = new ExecutionContext();
    if (mode === MODE_MODULE) {
      result = ReflectApply(handler.fetch, handler, [req, env, ctx]);
    } else {
      const ev = new FetchEvent(req, ctx);
      FunctionPrototypeCall(dispatchEvent, globalThis, ev);
      result = ev[kRespondWith];
      if (result === undefined) {
        op_outpost_fail(
          id,
          FAIL_NOT_A_RESPONSE,
          "no \"fetch\" event listener called event.respondWith(); call it synchronously " +
            "in the listener with a Response or a Promise of one",
        );
        return;
      }
    }
  } catch (error) {
    fail(id, error);
    return;
  }
  if (ObjectPrototypeIsPrototypeOf(ResponsePrototype, result)) {
    respond(id, result);
  } else {
    PromisePrototypeThen(
      PromiseResolve(result),
      (/** @type {any} */ res) => respond(id, res),
      (/** @type {any} */ error) => fail(id, error),
    );
  }
}

/**
 * @param {number} id
 * @param {any} res
 */
function respond(id, res) {
  try {
    respondUnchecked(id, res);
  } catch (error) {
    fail(id, error);
  }
}

/**
 * @param {any} body
 * @returns {boolean}
 */
function isUint8Array(body) {
  return TypedArrayPrototypeGetSymbolToStringTag(body) === "Uint8Array";
}

/**
 * @param {number} id
 * @param {any} res
 */
function respondUnchecked(id, res) {
  if (!ObjectPrototypeIsPrototypeOf(ResponsePrototype, res)) {
    op_outpost_fail(
      id,
      FAIL_NOT_A_RESPONSE,
      `the fetch handler returned ${describeValue(res)} instead of a Response; ` +
        "return a Response (or a Promise that resolves to one)",
    );
    return;
  }
  // Fast path: `new Response("text")`, `Response.json(...)` whose headers were never
  // touched carry their status, body and content type directly.
  const fastStatus = res[serveFastStatusKey];
  if (fastStatus !== 0 && !res[serveFastConsumedKey]) {
    const kind = res[serveFastHeaderKindKey];
    const body = res[serveFastBodyKey];
    if (typeof body === "string") {
      // The content type travels alone, not as a header list (the op knows the default).
      const contentType = kind === SERVE_FAST_HEADER_CONTENT_TYPE
        ? res[serveFastContentTypeKey]
        : "";
      if (fastRespondText === undefined) {
        op_outpost_respond_fast_text(id, fastStatus, kind, contentType, body);
      } else {
        fastRespondText(id, fastStatus, kind, contentType, body);
      }
      return;
    }
    /** @type {[string, string][]} */
    const headers = kind === SERVE_FAST_HEADER_DEFAULT_TEXT
      ? [["content-type", "text/plain;charset=UTF-8"]]
      : kind === SERVE_FAST_HEADER_CONTENT_TYPE
      ? [["content-type", res[serveFastContentTypeKey]]]
      : [];
    sendStatic(id, fastStatus, headers, body);
    return;
  }
  const inner = toInnerResponseForDenoServe(res);
  if (inner.type === "error") {
    op_outpost_fail(id, FAIL_NOT_A_RESPONSE, "the fetch handler returned Response.error()");
    return;
  }
  const headers = wireHeaderList(inner);
  const status = inner.status;
  if (inner.body === null) {
    op_outpost_respond_text(id, status, headers, "");
    return;
  }
  const source = inner.body.streamOrStatic;
  if (ObjectPrototypeIsPrototypeOf(ReadableStreamPrototype, source)) {
    if (source.locked || inner.body.unusable()) {
      throw new TypeError("the Response's body was already read or is locked");
    }
    const rid = resourceForReadableStream(source, inner.body.length ?? undefined);
    op_outpost_respond_stream(id, status, headers, rid);
    return;
  }
  if (source.consumed) {
    throw new TypeError("the Response's body was already read");
  }
  sendStatic(id, status, headers, source.body);
}

/**
 * @param {number} id
 * @param {number} status
 * @param {[string, string][]} headers
 * @param {any} data a string or a Uint8Array
 */
function sendStatic(id, status, headers, data) {
  if (typeof data === "string") {
    op_outpost_respond_text(id, status, headers, data);
  } else if (data === null || data === undefined) {
    op_outpost_respond_text(id, status, headers, "");
  } else if (isUint8Array(data)) {
    op_outpost_respond_bytes(id, status, headers, data);
  } else {
    throw new TypeError("unsupported static response body");
  }
}

/**
 * The message and source position an "error" event reports for `error`: where it was made
 * (its first stack frame), or for a value that is not an Error, where it was reported (the
 * first frame outside the runtime's own scripts), as deno_web's reportException does.
 * @param {any} error
 * @returns {{ message: string, filename: string, lineno: number, colno: number }}
 */
function errorLocation(error) {
  const described = core.destructureError(error);
  let frames = described.frames;
  if (frames.length === 0) {
    frames = ArrayPrototypeFilter(
      core.destructureError(new Error()).frames,
      (/** @type {any} */ frame) =>
        typeof frame.fileName === "string" && !StringPrototypeStartsWith(frame.fileName, "ext:"),
    );
  }
  const frame = frames[0];
  return {
    message: described.exceptionMessage,
    filename: frame?.fileName ?? "",
    lineno: frame?.lineNumber ?? 0,
    colno: frame?.columnNumber ?? 0,
  };
}

/**
 * `reportError(e)`: reports `e` as if it were thrown and nobody caught it (an "error" event
 * on the global scope, then the log unless a listener prevents it), and returns. The isolate
 * keeps serving, as in Workers and browsers.
 * @param {any} error
 */
export function reportError(error) {
  if (this !== undefined && this !== null && this !== globalThis) {
    throw new TypeError("Illegal invocation");
  }
  if (arguments.length < 1) {
    throw new TypeError(
      "Failed to execute 'reportError': 1 argument required, but only 0 present.",
    );
  }
  reportException(error);
}

/**
 * An exception nobody caught outside a request's promise chain (a timer callback, an event
 * listener): dispatched as an "error" event on the global scope and, unless a listener
 * prevents its default, logged. The isolate keeps serving, as in Workers.
 * @param {any} error
 */
export function reportException(error) {
  const ev = new event.ErrorEvent("error", { cancelable: true, ...errorLocation(error), error });
  try {
    FunctionPrototypeCall(dispatchEvent, globalThis, ev);
  } catch (listenerError) {
    logError(`Uncaught (in error listener) ${describeError(listenerError)}`);
  }
  if (!ev.defaultPrevented) {
    logError(`Uncaught ${describeError(error)}`);
  }
}

/**
 * A promise rejection nobody handled: dispatched as an "unhandledrejection" event on the
 * global scope and, unless a listener prevents its default, logged. Requests keep going.
 * @param {any} promise
 * @param {any} reason
 * @returns {boolean} always true: the rejection is handled here
 */
export function onUnhandledRejection(promise, reason) {
  const ev = new event.PromiseRejectionEvent("unhandledrejection", {
    cancelable: true,
    promise,
    reason,
  });
  FunctionPrototypeCall(dispatchEvent, globalThis, ev);
  if (!ev.defaultPrevented) {
    logError(`Uncaught (in promise) ${describeError(reason)}`);
  }
  return true;
}
