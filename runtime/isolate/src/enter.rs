//! Entering an isolate around every use. Several isolates share a worker thread, so none is
//! left entered: V8 requires the isolate in use to be the thread's current one, and
//! isolates to be exited in reverse order of entry.
//!
//! Entering an isolate that is not the thread's current one is not cheap (V8 looks up its
//! per-thread data under a process-wide lock: ~400 instructions, twice per request), so the
//! last isolate used stays entered on its thread between uses ([`RESIDENT`]): using it again
//! only counts one more entry. Another isolate takes its place when it is used, and an
//! isolate leaves the place before it is dropped.
//!
//! Entering also makes the isolate the owner of deno_crypto's per-thread state: deno_crypto
//! keeps the symbols it brands every new `CryptoKey` with in a thread-local, set when an
//! isolate first touches `crypto.subtle`, as if each thread ran one isolate. With several,
//! a key made in one isolate with another's symbols panics inside V8 ("attempt to use
//! Handle in an Isolate that is not its host") and aborts the process: any tenant could
//! take the node down by using WebCrypto after a neighbour did. So each isolate keeps a way
//! to hand over its own symbols ([`CryptoBrands`], in an isolate slot), and whichever isolate
//! is entered gets them in place first when another one had them.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use deno_core::v8;

use crate::limits::Watched;

/// Enters an isolate for as long as it lives.
pub struct EnterGuard(v8::UnsafeRawIsolatePtr);

impl EnterGuard {
    pub fn new(raw: v8::UnsafeRawIsolatePtr) -> Self {
        let address = address(raw);
        if RESIDENT.with(Cell::get) != address && GUARDS.with(Cell::get) == 0 {
            // No guard holds the resident isolate: it leaves, `raw` stays entered instead.
            release_resident();
            // SAFETY: `raw` belongs to a runtime owned by the caller and alive on this
            // thread; the entry is balanced by `release_resident` before it is dropped
            // (`drop_runtime`) or another isolate takes its place.
            unsafe { v8::Isolate::from_raw_isolate_ptr(raw).enter() };
            RESIDENT.with(|resident| resident.set(address));
        }
        // SAFETY: as above; balanced by `exit` in `drop`. For the resident isolate this only
        // counts one more entry.
        let mut isolate = unsafe {
            let isolate = v8::Isolate::from_raw_isolate_ptr(raw);
            isolate.enter();
            isolate
        };
        GUARDS.with(|guards| guards.set(guards.get() + 1));
        CryptoBrands::claim(&mut isolate);
        EnterGuard(raw)
    }
}

/// The address of the isolate `raw` points to (to tell isolates apart).
fn address(raw: v8::UnsafeRawIsolatePtr) -> usize {
    // SAFETY: `UnsafeRawIsolatePtr` is a transparent wrapper of a pointer.
    unsafe { std::mem::transmute::<v8::UnsafeRawIsolatePtr, *mut std::ffi::c_void>(raw) as usize }
}

/// Exits the resident isolate, if any, leaving none entered by residence.
fn release_resident() {
    let resident = RESIDENT.with(|resident| resident.replace(0));
    if resident != 0 {
        // SAFETY: `resident` was entered by `EnterGuard::new` on this thread and is alive
        // (an isolate leaves before it is dropped); this balances that entry.
        unsafe {
            let raw = std::mem::transmute::<*mut std::ffi::c_void, v8::UnsafeRawIsolatePtr>(
                resident as *mut std::ffi::c_void,
            );
            v8::Isolate::from_raw_isolate_ptr(raw).exit();
        }
    }
}

thread_local! {
    /// The address of the isolate left entered on this thread between uses (0: none).
    static RESIDENT: Cell<usize> = const { Cell::new(0) };
    /// [`EnterGuard`]s alive on this thread: the resident isolate changes only when none is.
    static GUARDS: Cell<usize> = const { Cell::new(0) };

    /// The [`CryptoBrands::id`] of the isolate whose symbols deno_crypto holds on this thread.
    static CRYPTO_OWNER: Cell<u64> = const { Cell::new(0) };
}

/// An isolate's way to make deno_crypto brand keys with its own symbols (kept in its slot).
pub struct CryptoBrands {
    id: u64,
    context: v8::Global<v8::Context>,
    /// `() => Crypto.registerSymbols(webidl.brand, kKeyObject)` of this isolate.
    register: v8::Global<v8::Function>,
}

impl CryptoBrands {
    /// Keeps `register` for the isolate, which has just called it (so owns the symbols).
    pub fn install(
        isolate: &mut v8::Isolate,
        context: v8::Global<v8::Context>,
        register: v8::Global<v8::Function>,
    ) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        isolate.set_slot(CryptoBrands {
            id,
            context,
            register,
        });
        CRYPTO_OWNER.with(|owner| owner.set(id));
    }

    /// Hands the entered isolate's symbols to deno_crypto unless it holds them already.
    fn claim(isolate: &mut v8::Isolate) {
        let Some(brands) = isolate.get_slot::<CryptoBrands>() else {
            return;
        };
        let id = brands.id;
        if CRYPTO_OWNER.with(Cell::get) == id {
            return;
        }
        let (context, register) = (brands.context.clone(), brands.register.clone());
        v8::scope_with_context!(scope, isolate, &context);
        let register = v8::Local::new(scope, &register);
        let undefined = v8::undefined(scope).into();
        // Fails only in an isolate being terminated, which runs no more JS: the owner stays
        // as it was, and the next isolate entered takes its symbols back.
        if register.call(scope, undefined, &[]).is_some() {
            CRYPTO_OWNER.with(|owner| owner.set(id));
        }
    }
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        GUARDS.with(|guards| guards.set(guards.get() - 1));
        // SAFETY: balances the `enter` of `new`, on the same thread.
        unsafe { v8::Isolate::from_raw_isolate_ptr(self.0).exit() };
    }
}

/// Drops a runtime whose isolate is not entered but by residence (every runtime here,
/// between uses). Dropping a runtime exits its isolate once, so it is entered once more
/// first, or V8 kills the process; a resident isolate leaves first (V8 refuses to dispose
/// of an isolate that is still entered).
pub fn drop_runtime(raw: v8::UnsafeRawIsolatePtr, runtime: deno_core::JsRuntime) {
    if RESIDENT.with(Cell::get) == address(raw) {
        // Runtimes are dropped between turns, never inside another isolate's: the resident
        // one is then the only isolate entered, and may leave.
        debug_assert_eq!(GUARDS.with(Cell::get), 0, "a runtime dropped inside a turn");
        release_resident();
    }
    // SAFETY: `raw` is `runtime`'s isolate, on this thread; the runtime's drop balances it.
    unsafe { v8::Isolate::from_raw_isolate_ptr(raw).enter() };
    drop(runtime);
}

/// A future polled with its isolate entered; each poll is a turn the CPU limit watches
/// (with the whole per-request limit as its budget: no request is in flight while loading).
///
/// Dropped unfinished (a load that timed out), it drops the inner future with the isolate
/// entered, as the V8 handles inside it require.
pub struct Entered<F> {
    raw: v8::UnsafeRawIsolatePtr,
    watched: Arc<Watched>,
    inner: Option<Pin<Box<F>>>,
}

impl<F: Future> Future for Entered<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Pending;
        };
        let _entered = EnterGuard::new(this.raw);
        let turn = this.watched.turn(this.watched.cpu_limit());
        let polled = inner.as_mut().poll(cx);
        turn.end();
        if polled.is_ready() {
            this.inner = None;
        }
        polled
    }
}

impl<F> Drop for Entered<F> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let _entered = EnterGuard::new(self.raw);
            drop(inner);
        }
    }
}

pub fn entered<F: Future>(
    raw: v8::UnsafeRawIsolatePtr,
    watched: &Arc<Watched>,
    inner: F,
) -> Entered<F> {
    Entered {
        raw,
        watched: watched.clone(),
        inner: Some(Box::pin(inner)),
    }
}
