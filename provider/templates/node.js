// Sluice's runner for OpenFaaS's node18/node20/node22 templates, without containers: it serves
// the handler module (`module.exports = async (event, context) => ...`) from the function's
// handler directory (its working directory) on $PORT, as the template's express server does.
// Node's own http module only; a package.json with dependencies is installed first.
"use strict";

const http = require("http");
const path = require("path");
const fs = require("fs");
const { execFileSync } = require("child_process");

const handlerDir = process.cwd();
const maxBody = parseInt(process.env.SLUICE_MAX_BODY_BYTES || String(16 * 1024 * 1024), 10);

function installDependencies() {
  let pkg;
  try {
    pkg = JSON.parse(fs.readFileSync(path.join(handlerDir, "package.json"), "utf8"));
  } catch (e) {
    if (e.code === "ENOENT") return;
    throw new Error(`package.json in ${handlerDir} is not valid JSON: ${e.message}`);
  }
  const deps = Object.keys(pkg.dependencies || {});
  if (deps.length === 0) return;
  const missing = deps.filter((d) => !fs.existsSync(path.join(handlerDir, "node_modules", d)));
  if (missing.length === 0) return;
  console.log(`installing ${missing.join(", ")} with npm in ${handlerDir}`);
  // Replicas starting together install one at a time (npm is not safe run twice at once in one
  // directory); a later one finds the work done and npm makes it quick.
  const base = process.env.SLUICE_BUILD_DIR || require("os").tmpdir();
  fs.mkdirSync(base, { recursive: true, mode: 0o700 });
  const key = require("crypto").createHash("sha256").update(handlerDir).digest("hex").slice(0, 16);
  execFileSync(
    "flock",
    [path.join(base, `npm-${key}.lock`), "npm", "install", "--omit=dev", "--no-audit", "--no-fund"],
    { cwd: handlerDir, stdio: ["ignore", process.stderr, process.stderr] },
  );
}

// limits.memory ($SLUICE_MEMORY_LIMIT, bytes) as this process's data limit, set once the
// dependencies are installed (npm is not held to it).
function limitMemory() {
  const limit = process.env.SLUICE_MEMORY_LIMIT;
  if (!limit) return;
  execFileSync("prlimit", ["--pid", String(process.pid), `--data=${limit}:${limit}`]);
}

class FunctionEvent {
  constructor(req, body, url) {
    this.body = body;
    this.headers = req.headers;
    this.method = req.method;
    this.query = url.query;
    this.path = url.path;
  }
}

class FunctionContext {
  constructor(cb) {
    this.statusCode = 200;
    this.cb = cb;
    this.headerValues = {};
    this.cbCalled = 0;
  }

  status(statusCode) {
    if (!statusCode) return this.statusCode;
    this.statusCode = statusCode;
    return this;
  }

  headers(value) {
    if (!value) return this.headerValues;
    this.headerValues = value;
    return this;
  }

  succeed(value) {
    this.cbCalled++;
    this.cb(undefined, value);
  }

  fail(value) {
    if (this.status() == "200") this.status(500);
    this.cbCalled++;
    this.cb(value, undefined);
  }
}

// The request's query as express's: a value per key, an array for a repeated one.
function parseUrl(raw) {
  const url = new URL(raw, "http://localhost");
  const query = {};
  for (const [k, v] of url.searchParams) {
    if (k in query) query[k] = [].concat(query[k], v);
    else query[k] = v;
  }
  return { path: url.pathname, query };
}

// The body as the template's body parsers give it: text for text/* (and for no content type),
// parsed JSON for application/json, fields for a form, else an empty object.
function parseBody(req, raw) {
  const type = (req.headers["content-type"] || "text/plain").split(";")[0].trim().toLowerCase();
  if (process.env.RAW_BODY === "true") return raw;
  if (type.startsWith("text/")) return raw.toString("utf8");
  if (type === "application/json" || type.endsWith("+json")) {
    return raw.length ? JSON.parse(raw.toString("utf8")) : {};
  }
  if (type === "application/x-www-form-urlencoded") {
    return Object.fromEntries(new URLSearchParams(raw.toString("utf8")));
  }
  return {};
}

const isArray = (a) => !!a && a.constructor === Array;
const isObject = (a) => !!a && a.constructor === Object;

// res.send as express does it, for what a handler returns.
function send(res, status, headers, value) {
  let body = value;
  let type;
  if (body === undefined || body === null) body = "";
  if (Buffer.isBuffer(body)) type = "application/octet-stream";
  else if (typeof body === "object") {
    body = JSON.stringify(body);
    type = "application/json; charset=utf-8";
  } else {
    body = String(body);
    type = "text/html; charset=utf-8";
  }
  for (const [k, v] of Object.entries(headers || {})) res.setHeader(k, v);
  if (!res.hasHeader("content-type")) res.setHeader("content-type", type);
  const bytes = Buffer.isBuffer(body) ? body : Buffer.from(body, "utf8");
  res.setHeader("content-length", bytes.length);
  res.writeHead(status);
  res.end(bytes);
}

function serve(handler) {
  const server = http.createServer((req, res) => {
    const url = parseUrl(req.url);
    if (url.path === "/_/health") return send(res, 200, { "content-type": "text/plain" }, "OK");
    const chunks = [];
    let size = 0;
    req.on("data", (c) => {
      size += c.length;
      if (size > maxBody) {
        send(res, 413, {}, "request entity too large");
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => {
      let body;
      try {
        body = parseBody(req, Buffer.concat(chunks));
      } catch (e) {
        return send(res, 400, {}, `invalid request body: ${e.message}`);
      }
      let fnContext;
      const cb = (err, result) => {
        if (res.headersSent) return;
        if (err) {
          console.error(err);
          return send(res, fnContext.status(), {}, err.toString ? err.toString() : err);
        }
        const out = isArray(result) || isObject(result) ? JSON.stringify(result) : result;
        send(res, fnContext.status(), fnContext.headers(), out);
      };
      fnContext = new FunctionContext(cb);
      Promise.resolve()
        .then(() => handler(new FunctionEvent(req, body, url), fnContext, cb))
        .then((r) => {
          if (!fnContext.cbCalled) fnContext.succeed(r);
        })
        .catch((e) => cb(e));
    });
  });
  server.keepAliveTimeout = 65000;
  server.listen(parseInt(process.env.PORT, 10), "127.0.0.1", () => {
    console.log(`${process.env.SLUICE_LANG || "node"} listening on port: ${process.env.PORT}`);
  });
}

installDependencies();
limitMemory();
serve(require(path.join(handlerDir, "handler")));
