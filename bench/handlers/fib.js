// Outpost's entry (Workers-style): a default import of a .wasm file is its WebAssembly.Module.
// Deno 2 rejects this form; its entry is fib.deno.js. The logic is in fib-app.js.
import fibModule from "./fib.wasm";
import { app } from "./fib-app.js";

export default app(fibModule);
