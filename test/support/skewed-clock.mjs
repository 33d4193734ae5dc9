// Preloaded (--import) into a test's child process: its clock runs AUTHFACE_TEST_CLOCK_SKEW_MS
// ahead (or behind), as a device whose RTC drifted would. Only this process sees it.
const skew = Number(process.env.AUTHFACE_TEST_CLOCK_SKEW_MS ?? 0);
const RealDate = Date;
class SkewedDate extends RealDate {
  constructor(...args) {
    if (args.length === 0) super(RealDate.now() + skew);
    else super(...args);
  }
  static now() {
    return RealDate.now() + skew;
  }
}
globalThis.Date = SkewedDate;
