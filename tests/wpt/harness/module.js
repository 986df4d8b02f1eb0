// The handler half of a generated WPT app (tests/wpt/run.py appends this to `const TEST = {...};`).
//
// TEST: {
//   key, url,            // "url/url-constructor.any.js?include=file", the test's URL (also the
//                        // app's `location` in its outpost.toml, as Deno gets `--location`)
//   timeoutMs,           // harness timeout: 10 s, 30 s for `timeout=long`
//   title,               // META title or null
//   testharness: {url, source},
//   report: {url, source},   // harness/report.js: a function expression, called with hooks
//   scripts: [{url, source}], // META scripts in order, then the test file (source null: not found)
// }
//
// Everything happens in the handler, never at module top level. A handler runs once per isolate;
// a second request answers the cached result.

// Capture what the glue needs before any test can patch it.
const G = globalThis; // the global object, whatever a test does to the `globalThis` property
const _eval = G.eval;
const _Response = G.Response;
const _stringify = JSON.stringify;
const _setTimeout = G.setTimeout;
const _clearTimeout = G.clearTimeout;
const _Promise = G.Promise;
const _apply = Reflect.apply;
const _defineProperty = Object.defineProperty;
const _getOwnPropertyDescriptor = Object.getOwnPropertyDescriptor;
const _String = String;

const TEST_STATUS = ["PASS", "FAIL", "TIMEOUT", "NOTRUN", "PRECONDITION_FAILED"];
const HARNESS_STATUS = ["OK", "ERROR", "TIMEOUT", "PRECONDITION_FAILED"];
const GRACE_MS = 2000;

let cached = null;

// How importScripts runs a classic script: global scope, sloppy unless it says "use strict".
function evalScript(script) {
  return _eval(script.source + "\n//# sourceURL=" + script.url);
}

// Indirect eval is not quite a classic script: its top-level let/const/class stay in the eval's
// own scope, and so do var and function declarations when the script is strict ("use strict"
// starts many WPT helpers). Scripts share those bindings through the global scope, so each
// script is evaluated with a probe appended (two arrow functions closing over its scope), and
// every top-level binding of its own (each identifier of its source is tried; one the global
// object also has is told apart with a momentary sentinel) is defined on the global object as
// an accessor that reads and writes the binding itself.
const PROBE =
  "\n;[(__wptName) => eval(__wptName), (__wptName, __wptValue) => eval(__wptName + ' = __wptValue')]";
const RESERVED = new Set((
  "arguments async await break case catch class const continue debugger default delete do else " +
  "enum eval export extends false finally for function get if implements import in instanceof " +
  "interface let new null of package private protected public return set static super switch " +
  "this throw true try typeof undefined var void while with yield"
).split(" "));
const _exec = RegExp.prototype.exec;
const _is = Object.is;
const _setHas = Set.prototype.has;
const _setAdd = Set.prototype.add;
const SENTINEL = {};

function evalClassicScript(script) {
  const probe = _eval(script.source + PROBE + "\n//# sourceURL=" + script.url);
  const get = probe[0];
  const set = probe[1];
  const ident = /[A-Za-z_$][\w$]*/g;
  const seen = new Set();
  let m;
  while ((m = _apply(_exec, ident, [script.source])) !== null) {
    const name = m[0];
    if (_apply(_setHas, seen, [name]) || _apply(_setHas, RESERVED, [name])) continue;
    _apply(_setAdd, seen, [name]);
    if (name.length > 200 || name.startsWith("__wpt")) continue;
    if (name in G) {
      // Does the name resolve to this script's own binding, or to the global object's? Put a
      // sentinel on the global object for a moment and look.
      const desc = _getOwnPropertyDescriptor(G, name);
      if (desc && !desc.configurable) continue;
      _defineProperty(G, name, { value: SENTINEL, writable: true, configurable: true });
      let own;
      try {
        own = !_is(get(name), SENTINEL);
      } catch {
        own = false;
      } finally {
        if (desc) _defineProperty(G, name, desc);
        else delete G[name];
      }
      if (!own) continue;
    } else {
      try {
        get(name); // ReferenceError: not declared here (or not initialized yet)
      } catch {
        continue;
      }
    }
    _defineProperty(G, name, {
      get: function () { return get(name); },
      set: function (v) { set(name, v); },
      enumerable: true,
      configurable: true,
    });
  }
}

function describe(error) {
  try {
    if (error && typeof error === "object" && "name" in error && "message" in error) {
      return _String(error.name) + ": " + _String(error.message);
    }
    return _String(error);
  } catch {
    return "(an error that cannot be turned into a string)";
  }
}

// testharness.js picks its environment once, when it loads, from the global's interfaces. An
// Outpost global is a worker scope (a ServiceWorkerGlobalScope, earlier a bare
// WorkerGlobalScope), so it would pick a worker environment that reports to a client page
// through postMessage or message events: there is none. Hide the worker scope interfaces while
// it loads so it picks ShellTestEnvironment (no timeout of its own, no message ports; what
// Deno's main global gets too); report.js then asks for `explicit_done` as a dedicated worker
// would. They are put back before anything else runs.
const SCOPES = [
  "DedicatedWorkerGlobalScope", "SharedWorkerGlobalScope", "ServiceWorkerGlobalScope",
  "WorkerGlobalScope",
];

function evalTestharness() {
  const hidden = [];
  for (const name of SCOPES) {
    const desc = _getOwnPropertyDescriptor(G, name);
    if (desc && desc.configurable) {
      hidden.push([name, desc]);
      delete G[name];
    }
  }
  try {
    evalScript(TEST.testharness);
  } finally {
    for (const [name, desc] of hidden) _defineProperty(G, name, desc);
  }
}

function harnessOnly(status, message) {
  return { harness: { status, message }, tests: [] };
}

function convert(tests, status, pendingAtTimeout, loadError) {
  const out = [];
  for (let i = 0; i < tests.length; i++) {
    const t = tests[i];
    let s = TEST_STATUS[t.status] || _String(t.status);
    let message = t.message === undefined || t.message === null ? null : _String(t.message);
    if (pendingAtTimeout && pendingAtTimeout.indexOf(t) >= 0) {
      s = "TIMEOUT";
      if (message === null) message = "still pending when the harness timed out";
    }
    out.push({ name: _String(t.name), status: s, message });
  }
  let hs = status ? HARNESS_STATUS[status.status] || _String(status.status) : "TIMEOUT";
  let hm = status && status.message !== undefined && status.message !== null
    ? _String(status.message)
    : null;
  if (pendingAtTimeout && hs === "OK") hs = "TIMEOUT";
  if (loadError !== null) {
    // What a worker's uncaught error at load does through testharness's error handler (which
    // sets the harness status before its done() would complain that no test was defined).
    hs = "ERROR";
    hm = loadError;
  }
  return { harness: { status: hs, message: hm }, tests: out };
}

async function runTest() {
  G.GLOBAL = {
    isWindow: function () { return false; },
    isWorker: function () { return true; },
    isShadowRealm: function () { return false; },
  };

  try {
    evalTestharness();
  } catch (e) {
    return harnessOnly("ERROR", "testharness.js did not load: " + describe(e));
  }

  let resolveCompletion;
  const completion = new _Promise((resolve) => { resolveCompletion = resolve; });
  const hooks = {
    complete(tests, status) { resolveCompletion({ tests, status }); },
  };
  let report;
  try {
    report = evalScript(TEST.report)(hooks);
  } catch (e) {
    return harnessOnly("ERROR", "report.js failed: " + describe(e));
  }

  if (TEST.title !== null) G.META_TITLE = TEST.title;

  // importScripts(META scripts..., test); the first that fails to load or throws ends the list.
  let loadError = null;
  for (const script of TEST.scripts) {
    if (script.source === null) {
      loadError = "NetworkError: could not load " + script.url;
      break;
    }
    try {
      evalClassicScript(script);
    } catch (e) {
      loadError = "uncaught at load of " + script.url + ": " + describe(e);
      break;
    }
  }

  try {
    report.done();
  } catch (e) {
    if (loadError === null) loadError = "done() threw: " + describe(e);
  }

  let timer = null;
  let graceTimer = null;
  let pendingAtTimeout = null;
  const timedOut = new _Promise((resolve) => {
    timer = _setTimeout(() => {
      pendingAtTimeout = report.pending();
      try {
        report.timeout(); // testharness marks the harness TIMEOUT and completes
      } catch {}
      // Completion may wait on a test's cleanup; give it a moment, then answer anyway.
      graceTimer = _setTimeout(() => resolve(null), GRACE_MS);
    }, TEST.timeoutMs);
  });
  const finished = await _Promise.race([completion, timedOut]);
  _clearTimeout(timer);
  if (graceTimer !== null) _clearTimeout(graceTimer);
  if (finished === null) {
    const r = convert(report.all(), null, pendingAtTimeout, loadError);
    r.harness.status = "TIMEOUT";
    r.harness.message = "the harness did not complete after its timeout";
    return r;
  }
  return convert(finished.tests, finished.status, pendingAtTimeout, loadError);
}

export default {
  async fetch(request, env, ctx) {
    if (cached === null) {
      cached = runTest().catch((e) => harnessOnly("ERROR", "glue failed: " + describe(e)));
    }
    const result = await cached;
    return new _Response(_stringify(result), {
      headers: { "content-type": "application/json; charset=utf-8" },
    });
  },
};
