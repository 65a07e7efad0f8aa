// edgepipe API docs: fetches /api/openapi.json and renders every operation, grouped by tag,
// with parameters, request body, responses (with $ref resolved into components) and the
// security each one needs.
//
// Why it is written this way:
// - The page is served with "script-src 'self'; style-src 'self'", so there is no inline
//   script or style anywhere; the few layout tweaks beyond app.css are set through
//   element.style (CSSOM), which that policy allows.
// - Everything is built with createElement/textContent, never innerHTML, so text from the
//   document can never become markup.
// - No libraries: the page must work offline, from the binary alone.
'use strict';

(function () {
  const SPEC_URL = '/api/openapi.json';
  const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
  // Expanding nested $refs stops here, so a recursive schema cannot hang the page.
  const MAX_DEPTH = 8;

  let spec = null;
  // Every rendered operation / schema: { el, text } where text is what the filter searches.
  const entries = [];

  // ---------------------------------------------------------------- DOM helpers

  // h('div', {className: 'x', style: {gap: '4px'}}, child, 'text', [more]) → element.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'className') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k === 'style') Object.assign(el.style, v); // CSSOM: allowed by the CSP
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      if (Array.isArray(c)) append(el, c);
      else el.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
    }
    return el;
  }

  function showError(msg) {
    document.getElementById('error-text').textContent = msg;
    document.getElementById('error').hidden = false;
  }

  // The descriptions use a little Markdown: paragraphs, **bold** and `code`. Rendering just
  // that (as nodes, not HTML) keeps them readable without a Markdown library.
  function md(text, className) {
    if (!text) return null;
    const wrap = h('div', { className: className || 'md' });
    for (const para of String(text).split(/\n\s*\n/)) {
      const p = h('p', { style: { margin: '0 0 6px' } });
      for (const part of para.split(/(\*\*[^*]+\*\*|`[^`]+`)/)) {
        if (!part) continue;
        if (part.startsWith('**') && part.endsWith('**') && part.length > 4) p.appendChild(h('b', { text: part.slice(2, -2) }));
        else if (part.startsWith('`') && part.endsWith('`') && part.length > 2) p.appendChild(h('code', { text: part.slice(1, -1) }));
        else p.appendChild(document.createTextNode(part));
      }
      wrap.appendChild(p);
    }
    return wrap;
  }

  function badge(text, cls, style) {
    return h('span', { className: 'badge ' + (cls || ''), text, style });
  }

  // HTTP methods keep the usual colours so GET and POST are told apart at a glance.
  function methodBadge(method) {
    const colours = { get: 'var(--sev-low)', post: 'var(--ok)', put: 'var(--warn)', patch: 'var(--warn)', delete: 'var(--bad)' };
    return badge(method.toUpperCase(), 'method', {
      background: colours[method] || 'var(--sev-info)',
      minWidth: '52px', textAlign: 'center', fontFamily: 'var(--mono)',
    });
  }

  // A flex <summary> loses the browser's disclosure triangle, so draw one.
  function chevron(details) {
    const c = h('span', { className: 'muted', text: '▸', style: { width: '10px', display: 'inline-block' } });
    details.addEventListener('toggle', () => { c.textContent = details.open ? '▾' : '▸'; });
    return c;
  }

  function statusBadge(code) {
    const c = String(code)[0];
    const cls = c === '2' ? 'online' : c === '4' ? 'sev-medium' : c === '5' ? 'sev-critical' : 'state';
    return badge(String(code), cls, { fontFamily: 'var(--mono)', minWidth: '38px', textAlign: 'center' });
  }

  function anchorId(kind, name) {
    return kind + '-' + String(name).replace(/[^A-Za-z0-9_-]/g, '_');
  }

  // ---------------------------------------------------------------- $ref handling

  // Follows a local JSON pointer ("#/components/schemas/Case") into the document.
  function lookup(ref) {
    if (typeof ref !== 'string' || !ref.startsWith('#/')) return undefined;
    let node = spec;
    for (const raw of ref.slice(2).split('/')) {
      const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
      if (node === null || typeof node !== 'object' || !(key in node)) return undefined;
      node = node[key];
    }
    return node;
  }

  function refName(ref) {
    return ref.split('/').pop();
  }

  // Resolves a chain of $refs; returns the target (or {} when it does not resolve, so the
  // page still renders and shows the broken name).
  function deref(obj) {
    let guard = 0;
    while (obj && obj.$ref && guard++ < 20) {
      const target = lookup(obj.$ref);
      if (target === undefined) return {};
      obj = target;
    }
    return obj || {};
  }

  // anyOf/oneOf [X, {type: null}] is how OpenAPI 3.1 writes "nullable X".
  function nullableInner(s) {
    const alts = s.anyOf || s.oneOf;
    if (!alts || alts.length !== 2) return null;
    const nonNull = alts.filter((a) => !(a && a.type === 'null'));
    return nonNull.length === 1 ? nonNull[0] : null;
  }

  // ---------------------------------------------------------------- schema rendering

  // A short type label: "string (int64)", "array of Case", "Severity | null", ...
  // Component names become links to the schema section.
  function typeLabel(s, depth) {
    depth = depth || 0;
    if (!s || depth > MAX_DEPTH) return ['any'];
    if (s.$ref) {
      const name = refName(s.$ref);
      return [h('a', { href: '#' + anchorId('schema', name), text: name, className: 'mono' })];
    }
    if (s.const !== undefined) return [h('code', { text: JSON.stringify(s.const) })];
    const inner = nullableInner(s);
    if (inner) return [...typeLabel(inner, depth + 1), ' | null'];
    for (const [key, sep] of [['oneOf', ' | '], ['anyOf', ' | '], ['allOf', ' & ']]) {
      if (s[key]) {
        const out = [];
        s[key].forEach((alt, i) => { if (i) out.push(sep); out.push(...typeLabel(alt, depth + 1)); });
        return out;
      }
    }
    let types = Array.isArray(s.type) ? s.type : s.type ? [s.type] : [];
    if (!types.length) {
      if (s.properties) types = ['object'];
      else return ['any JSON'];
    }
    const out = [];
    types.forEach((t, i) => {
      if (i) out.push(' | ');
      if (t === 'array') out.push('array of ', ...typeLabel(s.items, depth + 1));
      else if (t === 'object' && s.additionalProperties && typeof s.additionalProperties === 'object' && !s.properties) {
        out.push('map of ', ...typeLabel(s.additionalProperties, depth + 1));
      } else out.push(t);
    });
    if (s.format) out.push(' (' + s.format + ')');
    return out;
  }

  // Constraints worth knowing, appended after the description.
  function constraints(s) {
    s = s.$ref ? deref(s) : s;
    const inner = nullableInner(s);
    if (inner) s = deref(inner);
    const parts = [];
    if (s.enum) parts.push('one of: ' + s.enum.map((v) => JSON.stringify(v)).join(', '));
    if (s.items && s.items.$ref) {
      const it = deref(s.items);
      if (it.enum) parts.push('each one of: ' + it.enum.map((v) => JSON.stringify(v)).join(', '));
    }
    if (s.default !== undefined) parts.push('default ' + JSON.stringify(s.default));
    if (s.minimum !== undefined && s.maximum !== undefined) parts.push('range ' + s.minimum + '–' + s.maximum);
    else if (s.minimum !== undefined) parts.push('≥ ' + s.minimum);
    else if (s.maximum !== undefined) parts.push('≤ ' + s.maximum);
    if (s.pattern) parts.push('pattern ' + s.pattern);
    if (s.additionalProperties === false) parts.push('no other fields');
    if (s.deprecated) parts.push('deprecated');
    return parts;
  }

  // Merges allOf parts (after resolving them) into one object schema, as serde's
  // #[serde(flatten)] does for CaseDetail.
  function mergeAllOf(s, depth) {
    const merged = { type: 'object', properties: {}, required: [], description: s.description };
    for (const part of s.allOf) {
      let p = deref(part);
      if (p.allOf && depth < MAX_DEPTH) p = mergeAllOf(p, depth + 1);
      Object.assign(merged.properties, p.properties || {});
      merged.required.push(...(p.required || []));
      if (p.additionalProperties === false) merged.additionalProperties = false;
    }
    return merged;
  }

  // Appends table rows for `s` and (recursively) its fields. `seen` holds the component
  // names on the current path, to stop at recursion.
  function schemaRows(s, rows, depth, name, required, seen) {
    // A field's own description wins; else the one of the component it refers to.
    const inner0 = nullableInner(s);
    const desc = s.description || (s.$ref ? deref(s).description : inner0 && inner0.$ref ? deref(inner0).description : undefined);
    if (name !== null) {
      const c = constraints(s);
      rows.push(h('tr', {},
        h('td', { className: 'mono nowrap', style: { paddingLeft: (8 + depth * 16) + 'px' } }, name),
        h('td', { className: 'mono' }, typeLabel(s)),
        // required is null for rows that are not object fields (the body, union options).
        h('td', {}, required === null ? null : required ? badge('required', 'sev-high') : h('span', { className: 'muted', text: 'optional' })),
        h('td', { className: 'wrap' }, md(desc), c.length ? h('div', { className: 'hint', text: c.join(' · ') }) : null)));
    }
    if (depth > MAX_DEPTH) return;
    let target = s;
    const nextSeen = new Set(seen);
    if (s.$ref) {
      const n = refName(s.$ref);
      if (seen.has(n)) return; // recursive: the link in the type column is enough
      nextSeen.add(n);
      target = deref(s);
    }
    // Fields of this schema are indented one level below its own row (if it has one).
    const childDepth = name === null ? depth : depth + 1;
    const inner = nullableInner(target);
    if (inner) return schemaRows(inner, rows, childDepth, null, null, nextSeen);
    if (target.allOf) target = mergeAllOf(target, depth);
    if (target.properties) {
      const req = new Set(target.required || []);
      for (const [k, v] of Object.entries(target.properties)) schemaRows(v, rows, childDepth, k, req.has(k), nextSeen);
    }
    const alts = target.oneOf || target.anyOf;
    if (alts) {
      alts.forEach((alt, i) => {
        // Tagged unions read better under their tag value than as "option 3".
        const a = deref(alt);
        const tag = a.properties && Object.values(a.properties).find((p) => p && p.const !== undefined);
        const label = tag ? '(' + JSON.stringify(tag.const) + ')' : '(option ' + (i + 1) + ')';
        schemaRows(alt, rows, childDepth, label, null, nextSeen);
      });
    }
    if (target.items && (target.type === 'array' || (Array.isArray(target.type) && target.type.includes('array')))) {
      schemaRows(target.items, rows, childDepth, null, null, nextSeen);
    }
    if (target.additionalProperties && typeof target.additionalProperties === 'object' && Object.keys(target.additionalProperties).length) {
      schemaRows(target.additionalProperties, rows, childDepth, '{name}', null, nextSeen);
    }
  }

  function schemaTable(s) {
    const rows = [];
    // The top row names the schema itself (its $ref or its type) so the shape is clear even
    // for a plain string body.
    schemaRows(s, rows, 0, '(body)', null, new Set());
    return h('div', { className: 'table-wrap' },
      h('table', { className: 'schema' },
        h('thead', {}, h('tr', {}, h('th', { text: 'Field', style: { width: '20%' } }), h('th', { text: 'Type', style: { width: '25%' } }), h('th', { text: '', style: { width: '80px' } }), h('th', { text: 'Description' }))),
        h('tbody', {}, rows)));
  }

  // ---------------------------------------------------------------- examples

  // A made-up value for a schema without an example, so every body shows its shape.
  function synthesize(s, depth, seen) {
    if (!s || depth > MAX_DEPTH) return null;
    if (s.$ref) {
      const n = refName(s.$ref);
      if (seen.has(n)) return {};
      const target = deref(s);
      if (target.example !== undefined) return target.example;
      return synthesize(target, depth + 1, new Set(seen).add(n));
    }
    if (s.example !== undefined) return s.example;
    if (Array.isArray(s.examples) && s.examples.length) return s.examples[0];
    if (s.const !== undefined) return s.const;
    if (s.default !== undefined) return s.default;
    if (s.enum) return s.enum[0];
    if (s.allOf) return synthesize(mergeAllOf(s, depth), depth + 1, seen);
    if (s.oneOf || s.anyOf) return synthesize((s.oneOf || s.anyOf)[0], depth + 1, seen);
    const t = Array.isArray(s.type) ? s.type.find((x) => x !== 'null') : s.type;
    switch (t || (s.properties ? 'object' : undefined)) {
      case 'object': {
        const o = {};
        for (const [k, v] of Object.entries(s.properties || {})) o[k] = synthesize(v, depth + 1, seen);
        return o;
      }
      case 'array': return [synthesize(s.items, depth + 1, seen)];
      case 'integer': return 0;
      case 'number': return 0.0;
      case 'boolean': return true;
      case 'string': return s.format === 'binary' ? '<binary>' : 'string';
      default: return null;
    }
  }

  function examplePre(value) {
    const text = typeof value === 'string' ? value : JSON.stringify(value, null, 2);
    return h('pre', { className: 'sql', text });
  }

  // The examples of one media type: its named examples, its example, or one built from the
  // schema (marked as generated so nobody mistakes it for real output).
  function examplesFor(media) {
    const out = [];
    if (media.examples) {
      for (const [name, ex] of Object.entries(media.examples)) {
        const e = ex.$ref ? deref(ex) : ex;
        out.push(h('div', { className: 'hint', text: 'Example: ' + (e.summary || name) }), examplePre(e.value));
      }
    } else if (media.example !== undefined) {
      out.push(h('div', { className: 'hint', text: 'Example' }), examplePre(media.example));
    } else if (media.schema) {
      const target = deref(media.schema);
      const v = synthesize(media.schema, 0, new Set());
      const label = media.schema.$ref && target.example !== undefined
        ? 'Example (of ' + refName(media.schema.$ref) + ')' : 'Example (generated from the schema)';
      if (v !== null && target.format !== 'binary') out.push(h('div', { className: 'hint', text: label }), examplePre(v));
    }
    return out;
  }

  function mediaBlock(content) {
    return Object.entries(content || {}).map(([type, media]) =>
      h('div', { style: { margin: '6px 0 10px' } },
        h('div', {}, h('span', { className: 'muted', text: 'Content-Type ' }), h('code', { text: type })),
        media.schema ? schemaTable(media.schema) : null,
        examplesFor(media)));
  }

  // ---------------------------------------------------------------- operations

  function securityBlock(op) {
    const reqs = op.security !== undefined ? op.security : spec.security || [];
    const role = op['x-required-role'];
    if (!reqs.length) return h('p', {}, h('b', { text: 'Security: ' }), 'none (public endpoint).');
    const schemes = (spec.components && spec.components.securitySchemes) || {};
    const items = reqs.map((req) => Object.keys(req).map((name) => {
      const sc = schemes[name] || {};
      const how = sc.type === 'http' ? 'HTTP ' + (sc.scheme || '') + ' (Authorization: Bearer …)' : sc.type || '';
      return h('li', {}, h('code', { text: name }), ' — ' + how, sc.description ? md(sc.description, 'hint') : null);
    }));
    return h('div', {},
      h('p', { style: { margin: '0 0 4px' } }, h('b', { text: 'Security: ' }),
        role ? ['needs role ', roleBadge(role), role === 'admin' ? '' : ' or higher']
          : ['bearer token of scheme ', h('code', { text: Object.keys(reqs[0]).join(', ') })]),
      h('ul', { style: { margin: '0 0 8px', paddingLeft: '20px' } }, items));
  }

  function roleBadge(role) {
    const cls = { viewer: 'sev-low', operator: 'sev-medium', admin: 'sev-critical' }[role] || 'state';
    return badge(role, cls);
  }

  // The badge in an operation's summary line: who may call it.
  function authBadge(op) {
    const reqs = op.security !== undefined ? op.security : spec.security || [];
    if (op['x-required-role']) return roleBadge(op['x-required-role']);
    if (!reqs.length) return badge('public', 'none');
    return badge(Object.keys(reqs[0])[0] === 'deviceToken' ? 'device token' : Object.keys(reqs[0])[0], 'state');
  }

  function paramsBlock(params) {
    if (!params.length) return null;
    return h('div', {},
      h('h2', { text: 'Parameters', style: { marginTop: '10px' } }),
      h('div', { className: 'table-wrap' }, h('table', {},
        h('thead', {}, h('tr', {}, [['Name', '20%'], ['In', '70px'], ['', '80px'], ['Type', '25%'], ['Description', '']]
          .map(([t, w]) => h('th', { text: t, style: { width: w } })))),
        h('tbody', {}, params.map((p) => {
          const c = p.schema ? constraints(p.schema) : [];
          if (p.style === 'form' && p.explode === false) c.unshift('comma-separated');
          if (p.example !== undefined) c.push('e.g. ' + (Array.isArray(p.example) ? p.example.join(',') : p.example));
          return h('tr', {},
            h('td', { className: 'mono nowrap', text: p.name }),
            h('td', { text: p.in }),
            h('td', {}, p.required ? badge('required', 'sev-high') : h('span', { className: 'muted', text: 'optional' })),
            h('td', { className: 'mono' }, p.schema ? typeLabel(p.schema) : 'any'),
            h('td', { className: 'wrap' }, md(p.description), c.length ? h('div', { className: 'hint', text: c.join(' · ') }) : null));
        })))));
  }

  function bodyBlock(rb) {
    if (!rb) return null;
    const body = deref(rb);
    return h('div', {},
      h('h2', { text: 'Request body' + (body.required ? ' (required)' : ' (optional)'), style: { marginTop: '10px' } }),
      md(body.description, 'hint'),
      mediaBlock(body.content));
  }

  function responsesBlock(responses) {
    return h('div', {},
      h('h2', { text: 'Responses', style: { marginTop: '10px' } }),
      Object.entries(responses || {}).map(([code, r]) => {
        const resp = deref(r);
        return h('div', { style: { borderTop: '1px solid var(--border)', padding: '6px 0' } },
          h('div', { style: { display: 'flex', gap: '8px', alignItems: 'flex-start' } },
            statusBadge(code),
            h('div', { style: { flex: '1' } },
              md(resp.description),
              r.$ref ? h('div', { className: 'hint' }, 'Shared response ', h('code', { text: refName(r.$ref) })) : null)),
          h('div', { style: { paddingLeft: '46px' } }, mediaBlock(resp.content)));
      }));
  }

  function operationEl(path, method, op, pathItem, tag) {
    const id = anchorId('op', op.operationId || method + path);
    // Path-level parameters apply to every method; the operation's own win on name + in.
    const params = [...(pathItem.parameters || []), ...(op.parameters || [])].map(deref);
    const uniq = new Map(params.map((p) => [p.in + ':' + p.name, p]));
    // scrollMarginTop keeps a deep-linked operation clear of the sticky top bar.
    const details = h('details', { id, className: 'op', dataset: { testid: 'op', operationId: op.operationId || '' },
      style: { borderTop: '1px solid var(--border)', scrollMarginTop: '56px' } });
    const summary = h('summary', { style: { display: 'flex', flexWrap: 'wrap', alignItems: 'center', gap: '8px', padding: '6px 2px', color: 'var(--text)' } },
      chevron(details),
      methodBadge(method),
      h('code', { text: path, style: { fontSize: '13px', fontWeight: '600' } }),
      h('span', { text: op.summary || '', style: { flex: '1' } }),
      op.deprecated ? badge('deprecated', 'offline') : null,
      authBadge(op));
    // Build the body on first open: 24 operations with expanded schemas is a lot of DOM,
    // and most readers open a few.
    let built = false;
    const build = () => {
      if (built) return;
      built = true;
      details.appendChild(h('div', { style: { padding: '4px 4px 10px 12px' } },
        op.operationId ? h('div', { className: 'hint' }, 'operationId ', h('code', { text: op.operationId }), ' · ',
          h('a', { href: '#' + id, text: 'link' })) : null,
        md(op.description),
        securityBlock(op),
        paramsBlock([...uniq.values()]),
        bodyBlock(op.requestBody),
        responsesBlock(op.responses)));
    };
    details.addEventListener('toggle', () => { if (details.open) build(); });
    details.appendChild(summary);
    const role = op['x-required-role'] || '';
    // Every role-gated description opens with the same "Role: ... (viewer < operator <
    // admin)" paragraph; indexing it would make "admin" match every operation, so the role
    // is indexed on its own instead.
    const desc = (op.description || '').replace(/^\*\*Role:[^\n]*(\n\n|$)/, '');
    const text = [method, path, op.summary, op.operationId, desc, tag, role, role && 'role:' + role,
      (op.security && !op.security.length) ? 'public' : '',
      (op.parameters || []).map((p) => deref(p).name).join(' ')].join(' ').toLowerCase();
    entries.push({ el: details, text, build });
    return details;
  }

  function renderOperations() {
    const byTag = new Map();
    // Tags in the document's order first, then any others as they appear.
    for (const t of spec.tags || []) byTag.set(t.name, []);
    let total = 0;
    for (const [path, item] of Object.entries(spec.paths || {})) {
      for (const method of METHODS) {
        const op = item[method];
        if (!op) continue;
        const tag = (op.tags && op.tags[0]) || 'Other';
        if (!byTag.has(tag)) byTag.set(tag, []);
        byTag.get(tag).push([path, method, op, item]);
        total++;
      }
    }
    const root = document.getElementById('operations');
    for (const [tag, ops] of byTag) {
      if (!ops.length) continue;
      const info = (spec.tags || []).find((t) => t.name === tag) || {};
      const section = h('section', { className: 'panel tag', id: anchorId('tag', tag), dataset: { testid: 'tag' }, style: { scrollMarginTop: '56px' } },
        h('h2', {}, tag, h('span', { className: 'muted', text: ' ' + ops.length, style: { fontWeight: 'normal' } })),
        md(info.description, 'hint'),
        ops.map(([path, method, op, item]) => operationEl(path, method, op, item, tag)));
      root.appendChild(section);
    }
    return total;
  }

  function renderSchemas() {
    const schemas = (spec.components && spec.components.schemas) || {};
    const names = Object.keys(schemas);
    if (!names.length) return;
    const section = h('section', { className: 'panel tag', id: 'schemas-section', dataset: { testid: 'tag' }, style: { scrollMarginTop: '56px' } },
      h('h2', {}, 'Schemas', h('span', { className: 'muted', text: ' ' + names.length, style: { fontWeight: 'normal' } })),
      h('div', { className: 'hint', text: 'Components referenced by the operations above.' }));
    for (const name of names) {
      const s = schemas[name];
      const id = anchorId('schema', name);
      const details = h('details', { id, className: 'schema-def', style: { borderTop: '1px solid var(--border)', scrollMarginTop: '56px' } });
      details.appendChild(h('summary', { style: { padding: '6px 2px', color: 'var(--text)' } },
        h('code', { text: name, style: { fontWeight: '600' } }), ' ',
        h('span', { className: 'muted' }, typeLabel(s))));
      let built = false;
      const build = () => {
        if (built) return;
        built = true;
        details.appendChild(h('div', { style: { padding: '4px 4px 10px 12px' } },
          schemaTable({ $ref: '#/components/schemas/' + name }),
          s.example !== undefined ? [h('div', { className: 'hint', text: 'Example' }), examplePre(s.example)] : null));
      };
      details.addEventListener('toggle', () => { if (details.open) build(); });
      entries.push({ el: details, text: ('schema ' + name + ' ' + (s.description || '')).toLowerCase(), build });
      section.appendChild(details);
    }
    document.getElementById('schemas').appendChild(section);
  }

  function renderIntro() {
    const info = spec.info || {};
    document.title = (info.title || 'API') + ' ' + (info.version || '');
    document.getElementById('title').textContent = info.title || 'API';
    document.getElementById('version').textContent = 'v' + (info.version || '?') + ' · OpenAPI ' + (spec.openapi || '?');
    const intro = document.getElementById('intro');
    intro.replaceChildren(
      info.summary ? h('p', { text: info.summary, style: { margin: '0 0 6px', fontWeight: '600' } }) : null,
      md(info.description),
      h('div', { className: 'hint' }, 'Sections: ',
        (spec.tags || []).map((t, i) => [i ? ' · ' : '', h('a', { href: '#' + anchorId('tag', t.name), text: t.name })]),
        ' · ', h('a', { href: '#schemas-section', text: 'Schemas' })));
  }

  // ---------------------------------------------------------------- filter, hash, buttons

  function applyFilter() {
    const words = document.getElementById('filter').value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    let ops = 0;
    for (const e of entries) {
      const match = words.every((w) => e.text.includes(w));
      e.el.hidden = !match;
      if (e.el.classList.contains('op')) { ops++; if (match) shown++; }
    }
    // A tag section with nothing left in it would only be noise.
    for (const sec of document.querySelectorAll('section.tag')) {
      const items = sec.querySelectorAll('details');
      sec.hidden = items.length > 0 && [...items].every((d) => d.hidden);
    }
    document.getElementById('count').textContent = words.length ? shown + ' of ' + ops + ' operations' : ops + ' operations';
  }

  // "#op-listCases" or "#schema-Case": open it (and make sure the filter does not hide it).
  function openFromHash() {
    const id = decodeURIComponent(location.hash.slice(1));
    if (!id) return;
    const el = document.getElementById(id);
    if (!el) return;
    if (el.tagName === 'DETAILS') {
      if (el.hidden) { document.getElementById('filter').value = ''; applyFilter(); }
      el.open = true;
    }
    el.scrollIntoView({ block: 'start' });
  }

  function setAll(open) {
    for (const e of entries) {
      if (e.el.hidden || !e.el.classList.contains('op')) continue;
      if (open) e.build();
      e.el.open = open;
    }
  }

  async function main() {
    const filter = document.getElementById('filter');
    filter.style.width = '260px';
    filter.addEventListener('input', applyFilter);
    filter.addEventListener('keydown', (ev) => { if (ev.key === 'Escape') { filter.value = ''; applyFilter(); } });
    document.getElementById('expand-all').addEventListener('click', () => setAll(true));
    document.getElementById('collapse-all').addEventListener('click', () => setAll(false));
    try {
      const res = await fetch(SPEC_URL, { headers: { Accept: 'application/json' } });
      if (!res.ok) throw new Error(SPEC_URL + ' answered ' + res.status);
      spec = await res.json();
    } catch (err) {
      document.getElementById('loading').textContent = 'Could not load the API description.';
      showError('Loading ' + SPEC_URL + ' failed: ' + err.message);
      return;
    }
    renderIntro();
    renderOperations();
    renderSchemas();
    applyFilter();
    window.addEventListener('hashchange', openFromHash);
    openFromHash();
    document.body.dataset.ready = 'true'; // lets browser tests wait for the render
  }

  main();
})();
