// The credential the page sends when the server requires one (README, Deploying): an app opens the
// page as /?token=<session token>; the token is kept for this tab and sent as a Bearer header.
const params = new URLSearchParams(location.search);
if (params.get('token')) sessionStorage.setItem('mms-token', params.get('token'));
export const token = sessionStorage.getItem('mms-token') || '';

// fetch() with the page's credential.
export function authFetch(url, init = {}) {
  const headers = new Headers(init.headers || {});
  if (token) headers.set('Authorization', `Bearer ${token}`);
  return fetch(url, {...init, headers});
}
