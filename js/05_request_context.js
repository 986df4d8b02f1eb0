// @ts-check
// Which incoming request the running code works for, carried across `await`, promise jobs
// and timers by V8's continuation-preserved data (nothing else in an Outpost isolate uses
// it). Outbound `fetch` counts against that request's subrequest limit and is refused where
// no request is being handled.
import { core, primordials } from "ext:core/mod.js";

const {

  ObjectPrototypeIsPrototypeOf,
  PromisePrototypeThen,
  PromiseReject,
  ReflectApply,
  RegExpPrototypeExec,
  StringPrototypeIncludes,
  StringPrototypeStartsWith,
  StringPrototypeToLowerCase,
  StringPrototypeTrim,
  TypeError,
} = primordials;
const { getAsyncContext, setAsyncContext } = core;

/** Outbound fetches one request may make (set per isolate by `initInstance`). */
let maxSubrequests = 50;

/** @param {number} limit */
export function setSubrequestLimit(limit) {
  maxSubrequests = limit;
}

/** What is known of the request a piece of code works for. */
class RequestRecord {
  /** @param {string} id the node's id of the request (`x-request-id`) */
  constructor(id) {
    this.id = id;
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
  return ObjectPrototypeIsPrototypeOf(RequestRecord.prototype, record) ? record.id : "";
}

/**
 * Runs `fn` as part of a new request: everything it schedules (promise reactions, timers)
 * keeps that request's record.
 * @template T
 * @param {string} id the request's id
 * @param {() => T} fn
 * @returns {T}
 */
export function runInRequest(id, fn) {
  const outer = getAsyncContext();
  setAsyncContext(new RequestRecord(id));
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
 * `fetch`, counted against the current request's subrequest limit.
 * @param {(input: any, init?: any) => Promise<any>} inner deno_fetch's fetch
 */
export function countedFetch(inner) {
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
    return PromisePrototypeThen(
      ReflectApply(inner, this, arguments),
      undefined,
      (/** @type {any} */ error) => {
        throw explainRefusal(error, input);
      },
    );
  }
  return fetch;
}


