import type { z } from 'zod';

/**
 * A plain predicate derived from a zod schema: true exactly when the schema accepts the value.
 * The schemas in schema.ts are the one definition of what the door admits; zod words every
 * rejection, and this guard settles the common case (a well-formed body) without zod's issue
 * bookkeeping, which was most of the parse's cost (bench/README.md, "Where the time goes").
 *
 * It reads the schema's own definition (zod 4's `_zod.def`), so a change to a schema is a change
 * to its guard: regexes and bounds are the schema's, and a `.refine` calls the schema's own
 * function. A construct it does not know is refused when the guard is made (at module load,
 * naming the construct), never guessed. Only for values made by JSON.parse: there every object is
 * a plain object, no value is undefined but an absent key, and no number is NaN or infinite.
 * test/unit/parse-fast.test.ts holds the guards to zod on generated, captured and poison bodies.
 *
 * @example
 *   const isEnvelope = guardOf(OsloEnvelope);
 *   if (isEnvelope(JSON.parse(body))) ...
 */
export type Guard = (value: unknown) => boolean;

export function guardOf(schema: z.ZodType): Guard {
  return derive(schema, 'schema');
}

/** The parts of zod 4's definitions read here. */
interface Def {
  type: string;
  checks?: readonly { _zod: { def: CheckDef } }[];
  shape?: Record<string, z.ZodType>;
  innerType?: z.ZodType;
  options?: readonly z.ZodType[];
  element?: z.ZodType;
  keyType?: z.ZodType;
  valueType?: z.ZodType;
}

interface CheckDef {
  check: string;
  format?: string;
  pattern?: RegExp;
  value?: number;
  inclusive?: boolean;
  fn?: (value: unknown) => unknown;
}

function defOf(schema: z.ZodType): Def {
  return (schema as unknown as { _zod: { def: Def } })._zod.def;
}

function isJsonObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function derive(schema: z.ZodType, where: string): Guard {
  const def = defOf(schema);
  switch (def.type) {
    case 'string':
      return withChecks((v) => typeof v === 'string', def, where);
    case 'number':
      return withChecks((v) => typeof v === 'number', def, where);
    case 'boolean':
      return (v) => typeof v === 'boolean';
    case 'unknown':
      // Even z.unknown() requires its key in an object: absent is undefined.
      return (v) => v !== undefined;
    case 'nullable':
    case 'optional': {
      // optional(nullable(x)) and nullable(optional(x)), the usual pair, are one test.
      const innerDef = defOf(def.innerType!);
      const both = innerDef.type !== def.type && (innerDef.type === 'nullable' || innerDef.type === 'optional');
      const inner = derive(both ? innerDef.innerType! : def.innerType!, where);
      if (both) return (v) => v === undefined || v === null || inner(v);
      return def.type === 'nullable' ? (v) => v === null || inner(v) : (v) => v === undefined || inner(v);
    }
    case 'union': {
      const options = def.options!.map((o, i) => derive(o, `${where} option ${i}`));
      return (v) => options.some((o) => o(v));
    }
    case 'array': {
      const element = derive(def.element!, `${where}[]`);
      return (v) => Array.isArray(v) && v.every(element);
    }
    case 'record': {
      if (defOf(def.keyType!).type !== 'string') throw new Error(`guardOf: ${where}: only records keyed by z.string() have a guard`);
      // z.unknown() takes any value, undefined included (only an object's own keys are required).
      if (defOf(def.valueType!).type === 'unknown') return isJsonObject;
      const value = derive(def.valueType!, `${where}{}`);
      return (v) => {
        if (!isJsonObject(v)) return false;
        for (const key in v) if (!value(v[key])) return false;
        return true;
      };
    }
    case 'object': {
      const keys = Object.keys(def.shape!);
      const guards = keys.map((key) => derive(def.shape![key]!, `${where}.${key}`));
      return objectGuard(keys, guards);
    }
    default:
      throw new Error(`guardOf: ${where}: no guard for z.${def.type}(); derive it in src/notification/guard.ts or parse that value with zod alone`);
  }
}

/**
 * One test per key, each at a call site of its own: a loop over the keys would call every field's
 * guard from one site, which V8 then cannot inline (the parse was about 10% slower that way). The source
 * holds only indices and JSON-quoted keys; the guards are passed in.
 */
function objectGuard(keys: readonly string[], guards: readonly Guard[]): Guard {
  const tests = keys.map((key, i) => `if (!g[${i}](v[${JSON.stringify(key)}])) return false;`).join('\n');
  const make = new Function('g', 'isJsonObject', `return (v) => {\nif (!isJsonObject(v)) return false;\n${tests}\nreturn true;\n};`);
  return make(guards, isJsonObject) as Guard;
}

/** The type's guard, then each of the schema's checks, in order. */
function withChecks(isType: Guard, def: Def, where: string): Guard {
  const checks = (def.checks ?? []).map((c) => checkOf(c._zod.def, where));
  if (checks.length === 0) return isType;
  if (checks.length === 1) {
    const check = checks[0]!;
    return (v) => isType(v) && check(v);
  }
  return (v) => {
    if (!isType(v)) return false;
    for (let i = 0; i < checks.length; i++) if (!checks[i]!(v)) return false;
    return true;
  };
}

function checkOf(check: CheckDef, where: string): Guard {
  const { value, inclusive, pattern, fn } = check;
  switch (check.check) {
    case 'string_format':
      if (check.format === 'regex' && pattern) {
        return (v) => {
          pattern.lastIndex = 0; // as zod does, for a pattern with the g or y flag
          return pattern.test(v as string);
        };
      }
      break;
    case 'number_format':
      if (check.format === 'safeint') return (v) => Number.isSafeInteger(v);
      break;
    case 'greater_than':
      return inclusive ? (v) => (v as number) >= value! : (v) => (v as number) > value!;
    case 'less_than':
      return inclusive ? (v) => (v as number) <= value! : (v) => (v as number) < value!;
    case 'custom':
      // A .refine: the schema's own predicate.
      return (v) => Boolean(fn!(v));
  }
  throw new Error(
    `guardOf: ${where}: no guard for the check ${check.check}${check.format ? ` (${check.format})` : ''}; derive it in src/notification/guard.ts`,
  );
}
