// @ts-check
// Loaded first: state that the Deno extension scripts expect deno_runtime to have set up
// before they are evaluated. Outpost has no deno_runtime, so inert stand-ins go here.
import { core, internals } from "ext:core/mod.js";

// deno_crypto's 00_crypto.js passes `internals.kKeyObject` to Crypto.registerSymbols();
// deno_runtime sets it from ext:deno_node. Without a Symbol there, CryptoKeys are unbranded.
internals.kKeyObject ??= Symbol("kKeyObject");

// deno_fetch's 26_fetch.js loads ext:deno_telemetry unless these exist. Tracing is off.
const DID_NOT_ENTER = Symbol("DID_NOT_ENTER");
internals.__telemetry ??= {
  TRACING_ENABLED: false,
  PROPAGATORS: [],
  DID_NOT_ENTER,
  builtinTracer() {
    throw new Error("telemetry is not available");
  },
  ContextManager: { active() {} },
  enterSpan() {
    return DID_NOT_ENTER;
  },
  exitSpan() {},
};
internals.__telemetryUtil ??= {
  updateSpanFromClientResponse() {},
  updateSpanFromError() {},
  updateSpanFromRequest() {},
};

/**
 * Evaluates one of the extension crates' lazily loaded scripts (once) and returns its
 * exports. Everything loaded here while the snapshot is made is part of the snapshot.
 * @param {string} specifier
 * @returns {any}
 */
export function loadExt(specifier) {
  return core.loadExtScript(specifier);
}
