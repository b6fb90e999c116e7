// Browser tests of the console in Debian's Chromium (playwright-core, no
// downloaded browser). cmd/ledger's TestConsoleInChromium starts a served
// ledger with signed events posted, then runs this with:
//   BASE_URL, TOKEN, CUSTOMER, SHOTS (screenshot folder), CHROMIUM (executable).
// It asks the Go test to tamper with the log by printing "tamper" and
// waiting for a line on stdin. Exit 0: every check passed.
import { chromium } from "playwright-core";
import readline from "node:readline";
import path from "node:path";

const { BASE_URL, TOKEN, CUSTOMER, SHOTS } = process.env;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const failures = [];
const check = (ok, what) => {
  console.error(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failures.push(what);
};
const stdin = readline.createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();
async function askGo(what) {
  process.stdout.write(what + "\n");
  const { value } = await lines.next();
  if (value !== "ok") throw new Error(`the Go test answered ${value} to ${what}`);
}

// a11y is a basic accessibility check of the page: lang, one h1, a label
// for every visible form control, alt on images, names on buttons and links.
async function a11y(page, name) {
  const problems = await page.evaluate(() => {
    const out = [];
    if (!document.documentElement.getAttribute("lang")) out.push("html has no lang");
    const h1 = document.querySelectorAll("h1").length;
    if (h1 !== 1) out.push(`${h1} h1 elements`);
    if (!document.title.trim()) out.push("no title");
    for (const el of document.querySelectorAll("input, select, textarea")) {
      if (el.type === "hidden") continue;
      const labelled = (el.id && document.querySelector(`label[for="${CSS.escape(el.id)}"]`)) ||
        el.closest("label") || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby");
      if (!labelled) out.push(`unlabelled ${el.tagName.toLowerCase()} ${el.name}`);
    }
    for (const img of document.querySelectorAll("img")) if (!img.hasAttribute("alt")) out.push(`img without alt: ${img.src}`);
    for (const b of document.querySelectorAll("button")) {
      if (!(b.textContent.trim() || b.getAttribute("aria-label"))) out.push("button without a name");
    }
    for (const a of document.querySelectorAll("a[href]")) {
      if (!(a.textContent.trim() || a.getAttribute("aria-label"))) out.push(`link without text: ${a.href}`);
    }
    const ids = [...document.querySelectorAll("[id]")].map((e) => e.id);
    const dup = ids.filter((id, i) => ids.indexOf(id) !== i);
    if (dup.length) out.push(`duplicate ids: ${dup.join(", ")}`);
    return out;
  });
  check(problems.length === 0, `${name}: basic accessibility${problems.length ? " (" + problems.join("; ") + ")" : ""}`);
}

async function noHorizontalScroll(page, name) {
  const { scroll, client } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth, client: document.documentElement.clientWidth,
  }));
  check(scroll <= client, `${name}: no horizontal scroll at phone width (${scroll} <= ${client})`);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(10000);
  const page = await context.newPage();
  const jsErrors = [];
  page.on("pageerror", (e) => jsErrors.push(String(e)));
  // The wrong login (401) and the refused POST (403) are meant; anything else is not.
  page.on("console", (m) => {
    if (m.type() === "error" && !/status of 40[13]/.test(m.text())) jsErrors.push(m.text());
  });
  const customerURL = `${BASE_URL}/console/customers/${CUSTOMER}`;

  // Unauthenticated: to the login page, then back where we were going.
  await page.goto(customerURL);
  check(new URL(page.url()).pathname === "/console/login", `unauthenticated customer page goes to login (${page.url()})`);
  await a11y(page, "login");
  await shot(page, "login");

  // Bad token: the form again with an error.
  await page.fill("#token", "not-the-token");
  await page.click("button[type=submit]");
  check((await page.locator("#login-error").textContent())?.includes("not the ledger"), "bad token shows an error");
  check(await page.locator("#token").isVisible(), "bad token shows the form again");

  // Good token, typed and sent with the keyboard.
  await page.focus("#token");
  await page.keyboard.type(TOKEN);
  await page.keyboard.press("Enter");
  await page.waitForURL(customerURL);
  check(page.url() === customerURL, "good token goes on to the customer page");

  // CSRF: a POST without the token is refused with the session's cookie.
  const refused = await context.request.post(`${customerURL}/verify`, { form: {}, maxRedirects: 0 });
  check(refused.status() === 403, `verify without a CSRF token is 403 (${refused.status()})`);

  // Find a customer by id, with the keyboard ("/" focuses the search).
  await page.goto(`${BASE_URL}/console/`);
  await a11y(page, "find");
  await shot(page, "find");
  await page.evaluate(() => document.activeElement?.blur());
  await page.keyboard.press("/");
  check(await page.evaluate(() => document.activeElement?.id === "q"), "'/' focuses the customer search");
  await page.keyboard.type(CUSTOMER);
  await page.keyboard.press("Enter");
  await page.waitForURL(customerURL);

  // The timeline: the dispute (a linked object), provenance, signature status.
  const timeline = page.locator("table.timeline tbody tr");
  check((await timeline.count()) === 50, `the first timeline page holds 50 events (${await timeline.count()})`);
  check(await page.locator("table.timeline").getByText("charge.dispute.created").count() === 0, "the dispute is older than the first page");
  check((await page.getByText("needs_response").count()) > 0, "the customer's state lists the dispute");
  check((await page.locator(".sig-valid").count()) === 50, "every delivered event's signature is valid");
  check((await timeline.first().textContent()).includes("evt_poison_browser"), "the newest event comes first");
  check(await page.evaluate(() => !document.body.innerHTML.includes("<script>alert")), "a hostile customer name is text, not markup");
  await a11y(page, "customer");
  await shot(page, "customer");

  // Pagination: older events, then back to the newest.
  await page.click("a[rel=next]");
  const older = await timeline.count();
  check(older === 11, `the second page holds the 11 oldest events (${older})`);
  check((await page.locator("table.timeline").getByText("charge.dispute.created").count()) === 1, "the older page shows the dispute");
  check((await page.locator("table.timeline").getByText("object-dispute-dp_browser").count()) === 1, "the dispute names its linked stream");
  check((await page.locator("a[rel=next]").count()) === 0, "the oldest page has no older link");
  await shot(page, "customer-older");

  // An event's diff, from Stripe's previous_attributes.
  await page.locator("table.timeline a", { hasText: "customer.subscription.updated" }).click();
  const statusRow = page.locator("table.changes tr", { hasText: "status" });
  check((await statusRow.locator(".old").textContent()) === '"incomplete"' && (await statusRow.locator(".new").textContent()) === '"active"',
    "the event page shows status incomplete → active");
  check((await page.getByText("previous_attributes", { exact: false }).count()) > 0, "the diff says it comes from previous_attributes");
  await a11y(page, "event");
  await shot(page, "event");

  // A computed diff: a customer.updated against the previous customer snapshot.
  await page.goto(`${customerURL}/events/evt_up001_browser`);
  const emailRow = page.locator("table.changes tr", { hasText: "email" });
  check((await emailRow.locator(".new").textContent()) === '"browser+1@example.com"', "a computed diff shows the email change");
  check(await page.evaluate(() => document.querySelector("pre.payload").textContent.includes("</script>")), "the payload shows </script> as text");

  // State at an instant between the two subscription snapshots.
  await page.goto(customerURL);
  await page.fill("#at", "2025-06-15T15:06:55");
  await page.locator("form", { has: page.locator("#at") }).locator("button").click();
  await page.waitForURL(/\/state\?/);
  check((await page.locator(".s-incomplete").count()) === 1 && (await page.locator(".s-active").count()) === 0,
    "state at t0+15s: the subscription is incomplete");
  await a11y(page, "state");
  await shot(page, "state");

  // Verify, reached with the keyboard: PASS.
  await page.goto(customerURL);
  let reached = false;
  for (let i = 0; i < 40 && !reached; i++) {
    await page.keyboard.press("Tab");
    reached = await page.evaluate(() => document.activeElement?.id === "verify");
  }
  check(reached, "Tab reaches the verify button");
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/verify/);
  check((await page.locator("#verdict").textContent()).startsWith("PASS"), "verify passes");
  await a11y(page, "verify");
  await shot(page, "verify-pass");

  // Tamper, verify again: FAIL naming the event.
  await askGo("tamper");
  await page.goto(customerURL);
  await page.click("#verify");
  await page.waitForURL(/\/verify/);
  check((await page.locator("#verdict").textContent()).startsWith("FAIL"), "verify fails after tampering");
  check((await page.locator(".problems").textContent()).includes("evt_ch_browser"), "the failure names the altered event");
  await shot(page, "verify-fail");

  // Engineers: projections, and the diff as a table.
  await page.goto(`${BASE_URL}/console/projections`);
  check((await page.locator("table tbody tr", { hasText: "billing" }).count()) === 1, "the projections page lists billing");
  const letter = page.locator("tr", { hasText: "evt_poison_browser" });
  check((await letter.count()) === 1, "the dead letter is listed");
  await letter.getByRole("button", { name: "Retry evt_poison_browser" }).click();
  await page.waitForSelector("#retry-result");
  check((await page.locator("#retry-result").textContent()).includes("1 failed again"), "retrying the poison event fails again");
  await page.click("#diff");
  await page.waitForSelector("#diff-result");
  check((await page.locator("#diff-result").count()) === 1, "the diff shows its result");
  await a11y(page, "projections");
  await shot(page, "projections");

  // Rebuild from the console: it runs in the server's background; the page says when it finished.
  await page.getByRole("button", { name: "Rebuild billing" }).click();
  await page.waitForSelector("#rebuild-billing");
  for (let i = 0; i < 100 && (await page.locator("#rebuild-billing").textContent()).includes("running"); i++) {
    await page.waitForTimeout(200);
    await page.goto(`${BASE_URL}/console/projections`);
  }
  check((await page.locator("#rebuild-billing").textContent()).includes("the rebuilt version is live"), "the console's rebuild finishes and swaps");
  await a11y(page, "projections after a rebuild");
  await shot(page, "projections-rebuilt");

  // Reconcile: this server has no STRIPE_API_KEY, and the page says so.
  await page.click("nav >> text=Reconcile");
  await page.waitForURL(/\/console\/reconcile/);
  check((await page.locator("#reconcile-off").count()) === 1, "the reconcile page says reconcile is not configured");
  await a11y(page, "reconcile");
  await shot(page, "reconcile");

  // Phone width: no page scrolls sideways.
  const phone = await browser.newContext({ viewport: { width: 360, height: 740 }, isMobile: true, hasTouch: true,
    storageState: await context.storageState() });
  const p = await phone.newPage();
  for (const [name, url] of [["find", "/console/"], ["customer", `/console/customers/${CUSTOMER}`],
    ["event", `/console/customers/${CUSTOMER}/events/evt_s2_browser`], ["state", `/console/customers/${CUSTOMER}/state?at=2025-06-15T15:06:55Z`],
    ["projections", "/console/projections"], ["reconcile", "/console/reconcile"]]) {
    await p.goto(BASE_URL + url);
    await noHorizontalScroll(p, name);
    await shot(p, `phone-${name}`);
  }
  await phone.close();

  // Logout, by keyboard-reachable button.
  await page.goto(`${BASE_URL}/console/`);
  await page.click("text=Log out");
  await page.waitForURL(/\/console\/login/);
  await page.goto(customerURL);
  check(new URL(page.url()).pathname === "/console/login", "after logout the console asks for login again");

  check(jsErrors.length === 0, `no JavaScript or CSP errors (${jsErrors.join("; ")})`);
} finally {
  await browser.close();
  stdin.close();
}
if (failures.length) {
  console.error(`${failures.length} check(s) failed`);
  process.exit(1);
}
console.error("all browser checks passed");
