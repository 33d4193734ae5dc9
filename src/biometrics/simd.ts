/**
 * A 1:N scan in WebAssembly SIMD: `scores(probe, rows, count, out)` writes the dot product of the
 * probe with each of `count` consecutive float rows of the same dimensions (a multiple of 16). Four vector accumulators keep
 * the adds independent; the module is assembled here (about 700 bytes) so there is no build step
 * and nothing to download. Plain JS runs the same scan where SIMD is unavailable.
 */

const I32 = 0x7f;
const V128 = 0x7b;
const op = {
  block: 0x02,
  loop: 0x03,
  brIf: 0x0d,
  end: 0x0b,
  localGet: 0x20,
  localSet: 0x21,
  localTee: 0x22,
  f32Store: 0x38,
  i32Const: 0x41,
  i32Eqz: 0x45,
  i32LtU: 0x49,
  i32Add: 0x6a,
  i32Mul: 0x6c,
  f32Add: 0x92,
} as const;
const simd = (code: number) => [0xfd, ...uleb(code)];
const V128_LOAD = 0x00;
const F32X4_EXTRACT_LANE = 0x1f;
const F32X4_ADD = 0xe4;
const F32X4_MUL = 0xe6;
const I32X4_EXTRACT_LANE = 0x1b;
const I32X4_ADD = 0xae;
const I32X4_EXTADD_PAIRWISE_I16X8_S = 0x7e;
const I16X8_EXTMUL_LOW_I8X16_S = 0x9c;
const I16X8_EXTMUL_HIGH_I8X16_S = 0x9d;
const I32_STORE = 0x36;

function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];
const name = (s: string) => [...uleb(s.length), ...Buffer.from(s)];

function scoresBody(dimensions: number): number[] {
  // params: 0 probe, 1 rows, 2 count, 3 out; locals: 4 end (i32), 5..8 accumulators (v128)
  const [probe, rows, count, out, end] = [0, 1, 2, 3, 4];
  const acc = (k: number) => 5 + (k % 4);
  const code: number[] = [
    op.localGet, out, op.localGet, count, op.i32Const, 4, op.i32Mul, op.i32Add, op.localSet, end,
    op.block, 0x40,
    op.localGet, count, op.i32Eqz, op.brIf, 0,
    op.loop, 0x40,
  ];
  for (let k = 0; k < dimensions / 4; k++) {
    const offset = uleb(16 * k);
    code.push(op.localGet, probe, ...simd(V128_LOAD), 4, ...offset);
    code.push(op.localGet, rows, ...simd(V128_LOAD), 4, ...offset);
    code.push(...simd(F32X4_MUL));
    if (k >= 4) code.push(op.localGet, acc(k), ...simd(F32X4_ADD));
    code.push(op.localSet, acc(k));
  }
  code.push(
    op.localGet, out,
    op.localGet, 5, op.localGet, 6, ...simd(F32X4_ADD), op.localGet, 7, ...simd(F32X4_ADD), op.localGet, 8, ...simd(F32X4_ADD),
    op.localTee, 5, ...simd(F32X4_EXTRACT_LANE), 0,
    op.localGet, 5, ...simd(F32X4_EXTRACT_LANE), 1, op.f32Add,
    op.localGet, 5, ...simd(F32X4_EXTRACT_LANE), 2, op.f32Add,
    op.localGet, 5, ...simd(F32X4_EXTRACT_LANE), 3, op.f32Add,
    op.f32Store, 2, 0,
    op.localGet, rows, op.i32Const, ...sleb(dimensions * 4), op.i32Add, op.localSet, rows,
    op.localGet, out, op.i32Const, 4, op.i32Add, op.localTee, out,
    op.localGet, end, op.i32LtU, op.brIf, 0,
    op.end,
    op.end,
    op.end,
  );
  const locals = [2, 1, I32, 4, V128];
  const body = [...locals, ...code];
  return [...uleb(body.length), ...body];
}

/**
 * The same scan over int8 rows (a compact copy of 512-D templates: a quarter of the bytes to
 * read): `scores(probe, rows, count, out)` writes each row's integer dot product with the int8
 * probe as an i32. 16 values a step: the products widen to i16 (127 × 127 fits), pairs add into
 * i32 lanes, four independent accumulators.
 */
function int8ScoresBody(dimensions: number): number[] {
  // params: 0 probe, 1 rows, 2 count, 3 out; locals: 4 end (i32), 5..8 accumulators, 9 and 10 the step's probe and row (v128)
  const [probe, rows, count, out, end, P, R] = [0, 1, 2, 3, 4, 9, 10];
  const acc = (k: number) => 5 + (k % 4);
  const code: number[] = [
    op.localGet, out, op.localGet, count, op.i32Const, 4, op.i32Mul, op.i32Add, op.localSet, end,
    op.block, 0x40,
    op.localGet, count, op.i32Eqz, op.brIf, 0,
    op.loop, 0x40,
  ];
  for (let k = 0; k < dimensions / 16; k++) {
    const offset = uleb(16 * k);
    // the step's 16 int8 products, as two i16x8 halves, each widened to i32x4 pairs
    code.push(op.localGet, probe, ...simd(V128_LOAD), 4, ...offset, op.localSet, P);
    code.push(op.localGet, rows, ...simd(V128_LOAD), 4, ...offset, op.localSet, R);
    code.push(op.localGet, P, op.localGet, R, ...simd(I16X8_EXTMUL_LOW_I8X16_S), ...simd(I32X4_EXTADD_PAIRWISE_I16X8_S));
    code.push(op.localGet, P, op.localGet, R, ...simd(I16X8_EXTMUL_HIGH_I8X16_S), ...simd(I32X4_EXTADD_PAIRWISE_I16X8_S));
    code.push(...simd(I32X4_ADD));
    if (k >= 4) code.push(op.localGet, acc(k), ...simd(I32X4_ADD));
    code.push(op.localSet, acc(k));
  }
  code.push(
    op.localGet, out,
    op.localGet, 5, op.localGet, 6, ...simd(I32X4_ADD), op.localGet, 7, ...simd(I32X4_ADD), op.localGet, 8, ...simd(I32X4_ADD),
    op.localTee, 5, ...simd(I32X4_EXTRACT_LANE), 0,
    op.localGet, 5, ...simd(I32X4_EXTRACT_LANE), 1, op.i32Add,
    op.localGet, 5, ...simd(I32X4_EXTRACT_LANE), 2, op.i32Add,
    op.localGet, 5, ...simd(I32X4_EXTRACT_LANE), 3, op.i32Add,
    I32_STORE, 2, 0,
    op.localGet, rows, op.i32Const, ...sleb(dimensions), op.i32Add, op.localSet, rows,
    op.localGet, out, op.i32Const, 4, op.i32Add, op.localTee, out,
    op.localGet, end, op.i32LtU, op.brIf, 0,
    op.end,
    op.end,
    op.end,
  );
  const locals = [2, 1, I32, 6, V128];
  const body = [...locals, ...code];
  return [...uleb(body.length), ...body];
}

function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (byte & 0x40) === 0) || (n === -1 && (byte & 0x40) !== 0)) {
      out.push(byte);
      return out;
    }
    out.push(byte | 0x80);
  }
}

function moduleBytes(dimensions: number, int8: boolean): Uint8Array {
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [1, 0x60, 4, I32, I32, I32, I32, 0]), // type: (i32 i32 i32 i32) -> ()
    ...section(2, [1, ...name('env'), ...name('memory'), 0x02, 0x00, 1]), // import memory, min 1 page
    ...section(3, [1, 0]),
    ...section(7, [1, ...name('scores'), 0x00, 0]),
    ...section(10, [1, ...(int8 ? int8ScoresBody(dimensions) : scoresBody(dimensions))]),
  ]);
}

const compiled = new Map<string, WebAssembly.Module | null>();

/**
 * The compiled scan module for rows of `dimensions` float32 (or, `int8`, int8) values, or null
 * where WebAssembly SIMD is not available.
 */
export function simdModule(dimensions: number, int8 = false): WebAssembly.Module | null {
  if (dimensions % 16 !== 0) throw new Error(`the SIMD scan needs a multiple of 16 dimensions, not ${dimensions}`);
  const key = `${dimensions}:${int8}`;
  let module = compiled.get(key);
  if (module === undefined) {
    const bytes = moduleBytes(dimensions, int8);
    module = WebAssembly.validate(bytes) ? new WebAssembly.Module(bytes) : null;
    compiled.set(key, module);
  }
  return module;
}
