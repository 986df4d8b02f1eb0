// A small JSON API: routing on method + path with URLPattern, JSON in and out.
// Module-level state lives as long as the isolate: fine for a demo, not for data.
const todos = new Map();
let nextId = 1;

const routes = [
  { method: "GET", pattern: new URLPattern({ pathname: "/" }), handle: index },
  { method: "GET", pattern: new URLPattern({ pathname: "/todos" }), handle: list },
  { method: "POST", pattern: new URLPattern({ pathname: "/todos" }), handle: create },
  { method: "GET", pattern: new URLPattern({ pathname: "/todos/:id" }), handle: show },
  { method: "DELETE", pattern: new URLPattern({ pathname: "/todos/:id" }), handle: remove },
  { method: "POST", pattern: new URLPattern({ pathname: "/echo" }), handle: echo },
];

function index(_req, env) {
  return Response.json({ name: "json-api", version: env.API_VERSION, routes: routes.map((r) => `${r.method} ${r.pattern.pathname}`) });
}

function list() {
  return Response.json([...todos.values()]);
}

async function create(req) {
  let body;
  try {
    body = await req.json();
  } catch {
    return Response.json({ error: "body must be JSON" }, { status: 400 });
  }
  if (typeof body?.title !== "string" || body.title === "") {
    return Response.json({ error: "title (a non-empty string) is required" }, { status: 422 });
  }
  const todo = { id: nextId++, title: body.title, done: Boolean(body.done) };
  todos.set(todo.id, todo);
  return Response.json(todo, { status: 201, headers: { location: `/todos/${todo.id}` } });
}

function show(_req, _env, params) {
  const todo = todos.get(Number(params.id));
  return todo ? Response.json(todo) : Response.json({ error: "not found" }, { status: 404 });
}

function remove(_req, _env, params) {
  return todos.delete(Number(params.id)) ? new Response(null, { status: 204 }) : Response.json({ error: "not found" }, { status: 404 });
}

async function echo(req) {
  const value = await req.json();
  return Response.json({ received: value, contentType: req.headers.get("content-type") });
}

export default {
  async fetch(request, env) {
    for (const route of routes) {
      const match = route.pattern.exec(request.url);
      if (match && route.method === request.method) {
        return route.handle(request, env, match.pathname.groups);
      }
    }
    const allowed = routes.filter((r) => r.pattern.test(request.url)).map((r) => r.method);
    if (allowed.length > 0) {
      return Response.json({ error: "method not allowed" }, { status: 405, headers: { allow: allowed.join(", ") } });
    }
    return Response.json({ error: "not found", path: new URL(request.url).pathname }, { status: 404 });
  },
};
