// @ts-check
// Error classes for errors that ops raise. An op's Rust error names a class (deno_error's
// `#[class(...)]`); deno_core builds the JS error from the builder registered for that name,
// and with none registered the op throws `undefined`. deno_runtime registers these in
// 99_main.js; Outpost has no deno_runtime, so they are registered here, once, into the
// snapshot.
import { core } from "ext:core/mod.js";
import { loadExt } from "ext:outpost/00_infra.js";

const { DOMException } = loadExt("ext:deno_web/01_dom_exception.js");

// WebIDL's error names (https://webidl.spec.whatwg.org/#dfn-error-names-table): the ext
// crates raise e.g. `DOMExceptionOperationError` for an `OperationError` DOMException.
const DOM_EXCEPTION_NAMES = [
  "IndexSizeError",
  "HierarchyRequestError",
  "WrongDocumentError",
  "InvalidCharacterError",
  "NoModificationAllowedError",
  "NotFoundError",
  "NotSupportedError",
  "InUseAttributeError",
  "InvalidStateError",
  "SyntaxError",
  "InvalidModificationError",
  "NamespaceError",
  "InvalidAccessError",
  "TypeMismatchError",
  "SecurityError",
  "NetworkError",
  "AbortError",
  "URLMismatchError",
  "QuotaExceededError",
  "TimeoutError",
  "InvalidNodeTypeError",
  "DataCloneError",
  "EncodingError",
  "NotReadableError",
  "UnknownError",
  "ConstraintError",
  "DataError",
  "TransactionInactiveError",
  "ReadOnlyError",
  "VersionError",
  "OperationError",
  "NotAllowedError",
];

for (const name of DOM_EXCEPTION_NAMES) {
  core.registerErrorBuilder(
    `DOMException${name}`,
    (/** @type {string} */ msg) => new DOMException(msg, name),
  );
}

// The I/O error kinds of deno_error (what a failed connection or read in fetch reports). In
// Deno they are `Deno.errors.*`; a Worker has no `Deno`, so they are Errors with that name.
const IO_ERROR_NAMES = [
  "NotFound",
  "PermissionDenied",
  "ConnectionRefused",
  "ConnectionReset",
  "ConnectionAborted",
  "NotConnected",
  "AddrInUse",
  "AddrNotAvailable",
  "BrokenPipe",
  "AlreadyExists",
  "InvalidData",
  "TimedOut",
  "WriteZero",
  "WouldBlock",
  "UnexpectedEof",
  "Http",
  "NotSupported",
  "IsADirectory",
  "NotADirectory",
  "FilesystemLoop",
  "Busy",
];

for (const name of IO_ERROR_NAMES) {
  core.registerErrorBuilder(name, (/** @type {string} */ msg) => {
    const error = new Error(msg);
    error.name = name;
    return error;
  });
}
