// Auth Face door kiosk: one full-screen window on the local service's /kiosk page. Kept thin on
// purpose; every rule it applies lives in policy.js (tested without Electron).
import fs from 'node:fs';
import { app, BrowserWindow, Menu, session } from 'electron';
import { RestartPolicy, kioskHeaders, loadConfig, navigationGuard, permissionCheckHandler, permissionRequestHandler, readKioskSecret, windowOptions } from './policy.js';

const config = loadConfig(process.env);
const secret = readKioskSecret(config, (f) => fs.readFileSync(f, 'utf8'));
const restarts = new RestartPolicy();

app.whenReady().then(() => {
  if (!config.dev) Menu.setApplicationMenu(null);
  session.defaultSession.setPermissionRequestHandler(permissionRequestHandler(config));
  session.defaultSession.setPermissionCheckHandler(permissionCheckHandler(config));
  session.defaultSession.webRequest.onBeforeSendHeaders(kioskHeaders(config, secret));

  const win = new BrowserWindow(windowOptions(config));
  const guard = navigationGuard(config);
  win.webContents.on('will-navigate', guard);
  win.webContents.on('will-redirect', guard);
  win.webContents.setWindowOpenHandler(() => ({ action: 'deny' }));

  const reload = (why) => {
    const wait = restarts.onFailure();
    console.error(`kiosk: ${why}; reloading in ${wait} ms`);
    setTimeout(() => win.loadURL(config.url), wait);
  };
  win.webContents.on('render-process-gone', (_e, details) => reload(`renderer gone (${details.reason})`));
  win.on('unresponsive', () => reload('renderer unresponsive'));
  // the service may still be starting at boot: keep trying
  win.webContents.on('did-fail-load', (_e, code, description) => reload(`load failed (${code} ${description})`));

  win.loadURL(config.url);
});

app.on('window-all-closed', () => app.quit());
