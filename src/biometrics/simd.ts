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

/** What differs between the float32 and the int8 scan: the values a step takes, its products, the lanes' type. */
interface ScanKind {
  /** Row values one step covers (16 bytes of the row). */
  perStep: number;
  bytesPerValue: number;
  /** The step's products as one v128 of partial sums, from the probe and row chunks in locals P and R. */
  products: number[];
  laneAdd: number[];
  laneExtract: number[];
  scalarAdd: number;
  store: number;
}

// params: 0 probe, 1 rows, 2 count, 3 out; locals: 4 end (i32), 5..8 accumulators, 9 and 10 the step's probe and row (v128)
const [PROBE, ROWS, COUNT, OUT, END, P, R] = [0, 1, 2, 3, 4, 9, 10];

const F32_SCAN: ScanKind = {
  perStep: 4,
  bytesPerValue: 4,
  products: [op.localGet, P, op.localGet, R, ...simd(F32X4_MUL)],
  laneAdd: simd(F32X4_ADD),
  laneExtract: simd(F32X4_EXTRACT_LANE),
  scalarAdd: op.f32Add,
  store: op.f32Store,
};

/**
 * int8 rows (a compact copy of 512-D templates: a quarter of the bytes to read), an i32 dot product
 * per row: the 16 products of a step widen to i16 (127 × 127 fits) in two halves, and pairs of them
 * add into i32 lanes.
 */
const INT8_SCAN: ScanKind = {
  perStep: 16,
  bytesPerValue: 1,
  products: [
    op.localGet, P, op.localGet, R, ...simd(I16X8_EXTMUL_LOW_I8X16_S), ...simd(I32X4_EXTADD_PAIRWISE_I16X8_S),
    op.localGet, P, op.localGet, R, ...simd(I16X8_EXTMUL_HIGH_I8X16_S), ...simd(I32X4_EXTADD_PAIRWISE_I16X8_S),
    ...simd(I32X4_ADD),
  ],
  laneAdd: simd(I32X4_ADD),
  laneExtract: simd(I32X4_EXTRACT_LANE),
  scalarAdd: op.i32Add,
  store: I32_STORE,
};

/** The body of `scores`: one row a loop turn, the row's steps unrolled into four independent accumulators. */
function scoresBody(dimensions: number, kind: ScanKind): number[] {
  const acc = (k: number) => 5 + (k % 4);
  const code: number[] = [
    op.localGet, OUT, op.localGet, COUNT, op.i32Const, 4, op.i32Mul, op.i32Add, op.localSet, END,
    op.block, 0x40,
    op.localGet, COUNT, op.i32Eqz, op.brIf, 0,
    op.loop, 0x40,
  ];
  for (let k = 0; k < dimensions / kind.perStep; k++) {
    const offset = uleb(16 * k);
    code.push(op.localGet, PROBE, ...simd(V128_LOAD), 4, ...offset, op.localSet, P);
    code.push(op.localGet, ROWS, ...simd(V128_LOAD), 4, ...offset, op.localSet, R);
    code.push(...kind.products);
    if (k >= 4) code.push(op.localGet, acc(k), ...kind.laneAdd);
    code.push(op.localSet, acc(k));
  }
  code.push(
    op.localGet, OUT,
    op.localGet, 5, op.localGet, 6, ...kind.laneAdd, op.localGet, 7, ...kind.laneAdd, op.localGet, 8, ...kind.laneAdd,
    op.localTee, 5, ...kind.laneExtract, 0,
    op.localGet, 5, ...kind.laneExtract, 1, kind.scalarAdd,
    op.localGet, 5, ...kind.laneExtract, 2, kind.scalarAdd,
    op.localGet, 5, ...kind.laneExtract, 3, kind.scalarAdd,
    kind.store, 2, 0,
    op.localGet, ROWS, op.i32Const, ...sleb(dimensions * kind.bytesPerValue), op.i32Add, op.localSet, ROWS,
    op.localGet, OUT, op.i32Const, 4, op.i32Add, op.localTee, OUT,
    op.localGet, END, op.i32LtU, op.brIf, 0,
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
    ...section(10, [1, ...scoresBody(dimensions, int8 ? INT8_SCAN : F32_SCAN)]),
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
