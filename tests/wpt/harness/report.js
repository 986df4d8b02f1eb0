// The report glue (testharnessreport.js's role), evaluated as a classic script right after
// testharness.js. It is a function expression: module.js calls it with its hooks, so nothing is
// added to the global object.
(function (hooks) {
  "use strict";
  var all = [];
  // A dedicated worker's environment waits for the done() its .any.worker.js wrapper calls after
  // the test; the shell environment testharness picks here needs to be told. No timeout of
  // testharness's own: module.js runs the harness timeout.
  setup({ explicit_done: true, explicit_timeout: true });
  add_test_state_callback(function (test) {
    if (all.indexOf(test) < 0) all.push(test);
  });
  add_completion_callback(function (tests, status) {
    hooks.complete(tests, status);
  });
  var harnessDone = done;
  var harnessTimeout = timeout;
  return {
    done: function () { harnessDone(); },
    timeout: function () { harnessTimeout(); },
    all: function () { return all.slice(); },
    // Tests without a result yet: reported as TIMEOUT when the harness times out.
    pending: function () {
      return all.filter(function (t) { return t.phase < t.phases.HAS_RESULT; });
    },
  };
})
