// Writes wire.d.ts, the TypeScript types of the wire messages, from the
// JSON Schemas in proto-docs/schemas/ (which tests/schemas.rs generates
// from the Rust protocol types): one chain from the Rust types to the
// package's types, so neither side can drift.
//
//   node src/web/client/scripts/gen-types.mjs           # rewrite wire.d.ts
//   node src/web/client/scripts/gen-types.mjs --check   # exit 1 if wire.d.ts is stale
//
// tests/js_package.rs runs the check. Each schema file becomes one type
// named after the file (`server-message.json` → `ServerMessage`), and every
// definition (`#/definitions/X`) one type `X`; a definition two files share
// must be identical in both. Unions of messages tagged by `type` also get a
// lookup (`ServerMessageOf<"event">`). The generator covers the keywords
// schemars writes: $ref, type, const, enum, oneOf, anyOf, allOf,
// properties, required, additionalProperties, items; descriptions become
// doc comments. No dependencies.

import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const PACKAGE = join(dirname(fileURLToPath(import.meta.url)), "..");
const SCHEMAS = join(PACKAGE, "../../../proto-docs/schemas");
const OUTPUT = join(PACKAGE, "wire.d.ts");

/** `server-message.json` → `ServerMessage`. */
function typeName(file) {
  return basename(file, ".json").split("-").map((w) => w[0].toUpperCase() + w.slice(1)).join("");
}

/** Keywords that only annotate: they change nothing in the type. */
const ANNOTATIONS = new Set(["$schema", "title", "description", "default", "format", "minimum", "maximum", "definitions", "examples"]);

/** Reads every schema: their top-level types and their merged definitions. */
export function readSchemas(dir = SCHEMAS) {
  const roots = [];
  const definitions = new Map(); // name -> { schema, file }
  for (const file of readdirSync(dir).filter((f) => f.endsWith(".json")).sort()) {
    const schema = JSON.parse(readFileSync(join(dir, file), "utf8"));
    for (const [name, def] of Object.entries(schema.definitions ?? {})) {
      const seen = definitions.get(name);
      if (seen && JSON.stringify(seen.schema) !== JSON.stringify(def)) {
        throw new Error(`definition ${name} differs between ${seen.file} and ${file}`);
      }
      if (!seen) definitions.set(name, { schema: def, file });
    }
    roots.push({ name: typeName(file), schema, file });
  }
  return { roots, definitions };
}

const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

/** A doc comment for `text` at `indent`, or "" without text. */
function doc(text, indent) {
  if (!text) return "";
  const lines = text.replace(/\*\//g, "*\\/").split("\n");
  if (lines.length === 1) return `${indent}/** ${lines[0]} */\n`;
  return `${indent}/**\n${lines.map((l) => `${indent} *${l ? ` ${l}` : ""}`).join("\n")}\n${indent} */\n`;
}

/** The TypeScript type of `schema`, for a position indented by `indent`. */
function tsType(schema, indent) {
  if (schema === true || schema === undefined) return "unknown";
  if (schema === false) return "never";
  if (schema.$ref) {
    const match = /^#\/definitions\/(.+)$/.exec(schema.$ref);
    if (!match) throw new Error(`unsupported $ref ${schema.$ref}`);
    return match[1];
  }
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  const parts = [];
  const types = schema.type === undefined ? [] : [].concat(schema.type);
  if (types.length === 0 && (schema.properties || schema.additionalProperties !== undefined)) types.push("object");
  if (types.length > 0) {
    const alternatives = types.map((t) => {
      switch (t) {
        case "string": return "string";
        case "integer": case "number": return "number";
        case "boolean": return "boolean";
        case "null": return "null";
        case "array": return `${wrap(tsType(schema.items, indent))}[]`;
        case "object": return objectType(schema, indent);
        default: throw new Error(`unsupported type ${t}`);
      }
    });
    parts.push(alternatives.length > 1 ? alternatives.join(" | ") : alternatives[0]);
  }
  for (const key of ["oneOf", "anyOf"]) {
    if (schema[key]) parts.push(union(schema[key], indent));
  }
  if (schema.allOf) {
    parts.push(schema.allOf.map((s) => wrap(tsType(s, indent))).join(" & "));
  }
  for (const key of Object.keys(schema)) {
    const known = ["$ref", "const", "enum", "type", "items", "properties", "required", "additionalProperties", "oneOf", "anyOf", "allOf"];
    if (!known.includes(key) && !ANNOTATIONS.has(key)) throw new Error(`unsupported keyword ${key}`);
  }
  if (parts.length === 0) return "unknown";
  return parts.length === 1 ? parts[0] : parts.map(wrap).join(" & ");
}

/** Parentheses around a union or intersection used as an operand. */
function wrap(type) {
  return /^[^\n]*[|&]/.test(type) && !type.startsWith("{") ? `(${type})` : type;
}

/** A union: one member per line, with its description, when any has one or is an object. */
function union(members, indent) {
  const types = members.map((m) => tsType(m, `${indent}  `));
  const described = members.some((m) => m.description) || types.some((t) => t.includes("\n"));
  if (!described) return types.join(" | ");
  return "\n" + members.map((m, i) => `${doc(m.description, `${indent}  `)}${indent}  | ${types[i]}`).join("\n");
}

function objectType(schema, indent) {
  const inner = `${indent}  `;
  const required = new Set(schema.required ?? []);
  const lines = [];
  for (const [name, prop] of Object.entries(schema.properties ?? {})) {
    const key = IDENTIFIER.test(name) ? name : JSON.stringify(name);
    const optional = required.has(name) ? "" : "?";
    lines.push(`${doc(prop.description, inner)}${inner}${key}${optional}: ${tsType(prop, inner)};`);
  }
  const extra = schema.additionalProperties;
  if (extra !== undefined && extra !== false) {
    // Declared properties must fit the index signature: `unknown` when there are any.
    const value = lines.length > 0 || extra === true ? "unknown" : tsType(extra, inner);
    lines.push(`${inner}[key: string]: ${value};`);
  }
  if (lines.length === 0) return "{}";
  return `{\n${lines.join("\n")}\n${indent}}`;
}

/** A type after `=`: a space unless it starts on its own line. */
function spaced(type) {
  return type.startsWith("\n") ? type : ` ${type}`;
}

/** The `type` values of a union of tagged objects, or null when it is not one. */
function tags(schema) {
  const members = schema.oneOf ?? schema.anyOf;
  if (!members) return null;
  const values = members.map((m) => m.properties?.type?.const);
  return values.every((v) => typeof v === "string") ? values : null;
}

/** The text of wire.d.ts. */
export function generate(dir = SCHEMAS) {
  const { roots, definitions } = readSchemas(dir);
  const from = relative(PACKAGE, dir).split("\\").join("/");
  let out = `// The wire messages of the chanhub protocol (proto-docs/protocol.md), as
// TypeScript types. GENERATED by scripts/gen-types.mjs from
// ${from.replace(/^(\.\.\/)+/, "")}/*.json — do not edit; regenerate with
// \`node src/web/client/scripts/gen-types.mjs\`. tests/js_package.rs fails
// when this file is not what the schemas generate.
//
// The client's own API (chanhub.d.ts) is written by hand on top of these.
`;
  for (const root of roots) {
    const { definitions: _, $schema, title, ...body } = root.schema;
    const shared = definitions.get(root.name);
    if (shared) {
      // A file whose type is also a definition (task-spec.json's TaskSpec):
      // one type, which must be the same.
      const { description: a, ...left } = body;
      const { description: b, ...right } = shared.schema;
      if (JSON.stringify(left) !== JSON.stringify(right)) {
        throw new Error(`${root.file} differs from the definition ${root.name} of ${shared.file}`);
      }
      continue;
    }
    out += `\n${doc(`${root.schema.description ?? root.name}\n\nSchema: proto-docs/schemas/${root.file}.`, "")}`;
    out += `export type ${root.name} =${spaced(tsType(body, ""))};\n`;
    const values = tags(body);
    if (values) {
      out += `\n/** The ${root.name} whose \`type\` is \`T\`. */\n`;
      out += `export type ${root.name}Of<T extends ${root.name}["type"]> = Extract<${root.name}, { type: T }>;\n`;
    }
  }
  for (const name of [...definitions.keys()].sort()) {
    const { schema, file } = definitions.get(name);
    const note = `Schema: proto-docs/schemas/${file}#/definitions/${name}.`;
    out += `\n${doc(schema.description ? `${schema.description}\n\n${note}` : note, "")}`;
    out += `export type ${name} =${spaced(tsType(schema, ""))};\n`;
  }
  return out;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const text = generate();
  if (process.argv.includes("--check")) {
    let committed = "";
    try {
      committed = readFileSync(OUTPUT, "utf8");
    } catch {
      // missing: stale
    }
    if (committed !== text) {
      const a = committed.split("\n");
      const b = text.split("\n");
      let line = 0;
      while (line < a.length && a[line] === b[line]) line++;
      console.error(`${relative(process.cwd(), OUTPUT)} is not what proto-docs/schemas generate ` +
        `(first difference at line ${line + 1}:\n  committed: ${a[line] ?? "<end>"}\n  generated: ${b[line] ?? "<end>"}).\n` +
        "Regenerate it with `node src/web/client/scripts/gen-types.mjs`.");
      process.exit(1);
    }
    console.log("wire.d.ts is up to date");
  } else {
    writeFileSync(OUTPUT, text);
    console.log(`wrote ${relative(process.cwd(), OUTPUT)}`);
  }
}
