/**
 * Auth0 Action (Login / Post Login trigger) for promql-tenant-filter.
 *
 * Copies the user's tenant from app_metadata into a namespaced custom claim of the ID
 * token (Auth0's /userinfo answers with the ID token's claims, which is where the filter
 * reads it with `identity.source: "userinfo"`) and of the access token (for the
 * `jwt_payload_header` source behind Envoy's jwt_authn).
 *
 * Auth0 drops non-namespaced custom claims that could clash with standard ones, hence a
 * URL you control as prefix. The filter's `identity.claim` must be the full name, e.g.
 * "https://example.com/client_id" (AUTH0_CLAIM in deploy/auth0.env).
 *
 * Where the tenant comes from: app_metadata is writable only by administrators and the
 * Management API, never by the user (unlike user_metadata), so a user cannot pick a tenant.
 * A user without one gets no claim, and the filter answers 403.
 */
const NAMESPACE = "https://example.com/";

exports.onExecutePostLogin = async (event, api) => {
  const tenant = event.user.app_metadata && event.user.app_metadata.client_id;
  // A string, an integer, or an array of them (a user of several tenants).
  const valid = (v) => (typeof v === "string" && v !== "") || Number.isInteger(v);
  if (!(valid(tenant) || (Array.isArray(tenant) && tenant.length > 0 && tenant.every(valid)))) {
    return;
  }
  api.idToken.setCustomClaim(`${NAMESPACE}client_id`, tenant);
  api.accessToken.setCustomClaim(`${NAMESPACE}client_id`, tenant);
};
