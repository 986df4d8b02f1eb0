// @ts-check
// The extension's entry point, evaluated once while the startup snapshot is made. It leaves
// the host's hooks on `globalThis.__outpost_host`; each new isolate takes them and removes
// them, together with `Deno`, before any tenant code runs.
import { core } from "ext:core/mod.js";
import { claimCryptoBrands, performance } from "ext:outpost/10_globals.js";
import "ext:outpost/08_errors.js";
import "ext:outpost/12_webcrypto.js";
import "ext:outpost/30_cache.js";
import {
  configure,
  dispatch,
  onUnhandledRejection,
  reportError,
  reportException,
  setHandler,
} from "ext:outpost/20_dispatch.js";

core.setUnhandledPromiseRejectionHandler(onUnhandledRejection);
core.setReportExceptionCallback(reportException);
// deno_web's reportError ends in core.reportUnhandledException, which stops the event loop
// (a Deno process exits on it); a tenant's reportError only reports.
core.defineGlobalProperties(globalThis, { reportError: core.propWritable(reportError) });

/**
 * Called once per isolate, before the tenant's modules load.
 * @param {string} configJson the isolate's configuration (see `configure`)
 */
function initInstance(configJson) {
  performance.setTimeOrigin();
  configure(configJson);
  // Hands deno_crypto this isolate's CryptoKey symbols now (the host keeps them handed over
  // on every switch between isolates). deno_crypto hands them over once more when
  // `crypto.subtle` is first read: the same symbols, from within this isolate.
  claimCryptoBrands();
  delete globalThis.__outpost_host;
  delete globalThis.Deno;
  delete globalThis.__bootstrap;
}

Object.defineProperty(globalThis, "__outpost_host", {
  value: { initInstance, setHandler, dispatch, claimCryptoBrands },
  configurable: true,
  enumerable: false,
  writable: false,
});
