// Deno's entry: a source-phase import gives the WebAssembly.Module (Outpost does not support
// `import source` yet; its entry is fib.js). The logic is in fib-app.js.
import source fibModule from "./fib.wasm";
import { app } from "./fib-app.js";

export default app(fibModule);
