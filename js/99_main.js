// @ts-check
// The extension's entry point, evaluated once while the startup snapshot is made. It leaves
// the host's hooks on `globalThis.__outpost_host`; each new isolate takes them and removes
// them, together with `Deno`, before any tenant code runs.
import { core } from "ext:core/mod.js";
import { performance } from "ext:outpost/10_globals.js";
import "ext:outpost/08_errors.js";
import "ext:outpost/30_cache.js";
import {
  configure,
  dispatch,
  onUnhandledRejection,
  reportException,
  setHandler,
} from "ext:outpost/20_dispatch.js";

core.setUnhandledPromiseRejectionHandler(onUnhandledRejection);
core.setReportExceptionCallback(reportException);

/**
 * Called once per isolate, before the tenant's modules load.
 * @param {string} configJson the isolate's configuration (see `configure`)
 */
function initInstance(configJson) {
  performance.setTimeOrigin();
  configure(configJson);
  delete globalThis.__outpost_host;
  delete globalThis.Deno;
  delete globalThis.__bootstrap;
}

Object.defineProperty(globalThis, "__outpost_host", {
  value: { initInstance, setHandler, dispatch },
  configurable: true,
  enumerable: false,
  writable: false,
});
