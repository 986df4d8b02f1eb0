// @ts-check
// Which incoming request the running code works for, carried across `await`, promise jobs
// and timers by V8's continuation-preserved data (nothing else in an Outpost isolate uses
// it). Outbound `fetch` counts against that request's subrequest limit and is refused where
// no request is being handled.
import { core, primordials } from "ext:core/mod.js";
import { op_outpost_fetch_began, op_outpost_fetch_ended } from "ext:core/ops";

const {
  ArrayPrototypePush,
  ObjectPrototypeIsPrototypeOf,
  PromisePrototypeThen,
  PromiseReject,
  ReflectApply,
  RegExpPrototypeExec,
  StringPrototypeEndsWith,
  StringPrototypeIncludes,
  StringPrototypeIndexOf,
  StringPrototypeSlice,
  StringPrototypeStartsWith,
  StringPrototypeToLowerCase,
  StringPrototypeTrim,
  TypeError,
} = primordials;
const { getAsyncContext, setAsyncContext } = core;
/** `core.getPromiseDetails`' state of a rejected promise (V8's Promise::PromiseState). */
const PROMISE_REJECTED = 2;

/** Outbound fetches one request may make (set per isolate by `initInstance`). */
let maxSubrequests = 50;

/** @param {number} limit */
export function setSubrequestLimit(limit) {
  maxSubrequests = limit;
}

/** What is known of the request a piece of code works for. */
class RequestRecord {
  /**
   * @param {number} dispatchId the host's number for the request in this isolate
   * @param {string} headers its headers as the host passed them (every name and value
   *   followed by a NUL), the node's `x-request-id` among them
   * @param {string | null} traceparent its W3C `traceparent`, if it came with one
   * @param {string | null} tracestate its W3C `tracestate`, if any
   */
  constructor(dispatchId, headers, traceparent, tracestate) {
    this.dispatchId = dispatchId;
    this.headers = headers;
    /** @type {string | undefined} its `x-request-id`, once a log line asked for it */
    this.id = undefined;
    this.traceparent = traceparent;
    this.tracestate = tracestate;
    // A sampled trace (flags 01): its outbound fetches are timed for the node's spans.
    this.sampled = traceparent !== null && traceparent.length === 55 &&
      StringPrototypeEndsWith(traceparent, "-01");
    this.subrequests = 0;
  }
}

/**
 * The id of the request the running code works for (its log lines carry it), or "" outside
 * any request.
 * @returns {string}
 */
export function currentRequestId() {
  const record = getAsyncContext();
  if (!ObjectPrototypeIsPrototypeOf(RequestRecord.prototype, record)) {
    return "";
  }
  if (record.id === undefined) {
    record.id = "";
    const list = joinedHeaderList(record.headers);
    for (let i = 0; i < list.length; i++) {
      if (list[i][0] === "x-request-id") {
        record.id = list[i][1];
        break;
      }
    }
  }
  return record.id;
}

/**
 * The header list of a request's headers as the host passes them (every name and value
 * followed by a NUL): for its `Request` when the handler reads its headers, and for its id
 * when a log line needs it (the id is not passed as a string of its own on every request).
 * @param {string} joined
 * @returns {[string, string][]}
 */
export function joinedHeaderList(joined) {
  /** @type {[string, string][]} */
  const list = [];
  let start = 0;
  while (start < joined.length) {
    const nameEnd = StringPrototypeIndexOf(joined, "\0", start);
    const valueEnd = StringPrototypeIndexOf(joined, "\0", nameEnd + 1);
    ArrayPrototypePush(list, [
      StringPrototypeSlice(joined, start, nameEnd),
      StringPrototypeSlice(joined, nameEnd + 1, valueEnd),
    ]);
    start = valueEnd + 1;
  }
  return list;
}

/**
 * Runs `fn` as part of a new request: everything it schedules (promise reactions, timers)
 * keeps that request's record.
 * @template T
 * @param {number} dispatchId the host's number for the request
 * @param {string} headers its headers as the host passed them
 * @param {string | null} traceparent its trace context, if any
 * @param {string | null} tracestate
 * @param {() => T} fn
 * @returns {T}
 */
export function runInRequest(dispatchId, headers, traceparent, tracestate, fn) {
  const outer = getAsyncContext();
  setAsyncContext(new RequestRecord(dispatchId, headers, traceparent, tracestate));
  try {
    return fn();
  } finally {
    setAsyncContext(outer);
  }
}

const BLOCKED = "outbound requests to loopback, private, link-local and cloud-metadata " +
  "addresses are not allowed from this node";

/**
 * Says why a fetch was refused by the node (its egress policy, or a scheme tenants may not
 * fetch), in words a tenant understands.
 * @param {any} error
 * @param {any} input what was passed to fetch
 * @returns {any}
 */
function explainRefusal(error, input) {
  let url = "";
  try {
    url = typeof input === "string" ? input : String(input?.url ?? input);
  } catch {
    // An input that cannot be turned into text was not a file: URL.
  }
  if (StringPrototypeStartsWith(StringPrototypeToLowerCase(StringPrototypeTrim(url)), "file:")) {
    return new TypeError("fetch() cannot load file: URLs: apps have no file system access", {
      cause: error,
    });
  }
  const refusal = (/** @type {any} */ e) =>
    e !== null && typeof e === "object" && typeof e.message === "string" &&
      StringPrototypeIncludes(e.message, "Requires net access")
      ? e.message
      : null;
  const detail = refusal(error) ?? refusal(error?.cause);
  if (detail === null) {
    return error;
  }
  const host = RegExpPrototypeExec(/Requires net access to "([^"]*)"/, detail)?.[1] ??
    "that address";
  return new TypeError(`fetch to ${host} was refused: ${BLOCKED}`, { cause: error });
}

/**
 * `fetch`, counted against the current request's subrequest limit, and carrying the
 * request's W3C trace context (`traceparent`, `tracestate`) unless the app set its own:
 * the trace it was called in (with `--otlp`, the node's handler span as the parent). In a
 * sampled trace, each fetch's start and response head are reported to the host, which
 * makes a client span of it.
 * @param {(input: any, init?: any) => Promise<any>} inner deno_fetch's fetch
 * @param {any} RequestClass the Request constructor
 */
export function countedFetch(inner, RequestClass) {
  /**
   * @param {any} input
   * @param {any} [init]
   */
  function fetch(input, init = undefined) {
    const record = getAsyncContext();
    if (!ObjectPrototypeIsPrototypeOf(RequestRecord.prototype, record)) {
      return PromiseReject(
        new TypeError(
          "fetch() can only be called while handling a request (not at module top level, " +
            "nor from work scheduled there)",
        ),
      );
    }
    if (record.subrequests >= maxSubrequests) {
      return PromiseReject(
        new TypeError(
          `too many subrequests: a request may make at most ${maxSubrequests} fetch() calls ` +
            "(limits.subrequests)",
        ),
      );
    }
    record.subrequests++;
    let args = arguments;
    let span = -1;
    if (record.traceparent !== null) {
      try {
        const request = new RequestClass(input, init);
        if (!request.headers.has("traceparent")) {
          request.headers.set("traceparent", record.traceparent);
          if (record.tracestate !== null && !request.headers.has("tracestate")) {
            request.headers.set("tracestate", record.tracestate);
          }
        }
        args = [request];
        if (record.sampled) {
          span = op_outpost_fetch_began(record.dispatchId, request.method, request.url);
        }
      } catch {
        // What the Request constructor refuses, fetch refuses too, with the same error.
      }
    }
    const dispatchId = record.dispatchId;
    const promise = ReflectApply(inner, this, args);
    if (span < 0) {
      // Already rejected (an aborted signal) with nothing to explain: handed back as it is,
      // so it rejects as soon as the spec says, not a microtask later.
      const [state, result] = core.getPromiseDetails(promise);
      if (state === PROMISE_REJECTED && explainRefusal(result, input) === result) {
        return promise;
      }
    }
    return PromisePrototypeThen(
      promise,
      (/** @type {any} */ response) => {
        if (span >= 0) op_outpost_fetch_ended(dispatchId, span, response.status);
        return response;
      },
      (/** @type {any} */ error) => {
        if (span >= 0) op_outpost_fetch_ended(dispatchId, span, 0);
        throw explainRefusal(error, input);
      },
    );
  }
  return fetch;
}


