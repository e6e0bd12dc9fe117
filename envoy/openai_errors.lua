-- Envoy Lua filter of typegpt-gateway. It sits before grpc_json_transcoder, so:
--  * on the way in it answers a request without a well-formed key on its headers, before the
--    transcoder buffers its body (routes that need a key carry the answer as metadata); it
--    strips gRPC control headers that plain HTTP clients must not be able to set (grpc-timeout
--    would become a server deadline, a bad *-bin header a 500), and headers whose names gRPC
--    metadata cannot carry;
--  * on the way out it sees the transcoded response and every local reply, and makes each
--    error an OpenAI-shaped JSON body: {"error": {"message", "type", "param", "code"}}.
-- Native gRPC traffic (application/grpc) passes untouched both ways.

local function is_grpc(content_type)
  return content_type ~= nil and string.sub(content_type, 1, 16) == "application/grpc"
end

-- The OpenAI error type of each status from 400 to 599: the backend's own rule
-- (errors.default_error_type), which the Envoy config that loads this file writes in
-- (process/envoy.py), so that Envoy's replies and the backend's errors cannot disagree.
local ERROR_TYPES = {--[[ error types ]]}

-- Friendlier words for the replies Envoy makes on its own.
local LOCAL_MESSAGES = {
  [404] = "Unknown request URL. This gateway serves POST /v1/chat/completions, "
    .. "POST /v1/completions, POST /v1/embeddings, POST /v1/images/generations, "
    .. "POST /v1/audio/speech, POST /v1/audio/transcriptions, GET /v1/models, "
    .. "GET /v1/models/{model} and the admin API under /v1/admin/keys.",
  [408] = "The request was not received in time.",
  [413] = "Request body too large for this gateway.",
  [431] = "Request headers too large.",
  [503] = "The gateway's backend is not available right now; try again shortly.",
}

-- The second byte a UTF-8 lead byte allows, where it is narrower than 80-BF (no overlong
-- forms, no surrogates, nothing past U+10FFFF).
local SECOND_BYTE = {[0xE0] = {0xA0, 0xBF}, [0xED] = {0x80, 0x9F}, [0xF0] = {0x90, 0xBF},
  [0xF4] = {0x80, 0x8F}}

local function utf8_length(s, i)
  local c = string.byte(s, i)
  local length = (c < 0x80 and 1) or (c >= 0xC2 and c <= 0xDF and 2)
    or (c >= 0xE0 and c <= 0xEF and 3) or (c >= 0xF0 and c <= 0xF4 and 4) or 0
  if length < 2 then
    return length
  end
  for j = 1, length - 1 do
    local b = string.byte(s, i + j)
    local low, high = 0x80, 0xBF
    if j == 1 and SECOND_BYTE[c] then
      low, high = SECOND_BYTE[c][1], SECOND_BYTE[c][2]
    end
    if b == nil or b < low or b > high then
      return 0
    end
  end
  return length
end

-- A JSON body must be UTF-8, but a message may quote a client's stray bytes (the transcoder
-- does, for a body that is not UTF-8): each byte that is not part of a character becomes U+FFFD.
local function valid_utf8(s)
  if not string.find(s, "[\128-\255]") then
    return s
  end
  local out, i = {}, 1
  while i <= #s do
    local length = utf8_length(s, i)
    if length == 0 then
      out[#out + 1] = "\\ufffd"
      i = i + 1
    else
      out[#out + 1] = string.sub(s, i, i + length - 1)
      i = i + length
    end
  end
  return table.concat(out)
end

local function json_string(s)
  s = string.gsub(s, '[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == "\\" then return "\\\\" end
    if c == "\n" then return "\\n" end
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. valid_utf8(s) .. '"'
end

local function percent_decode(s)
  return (string.gsub(s, "%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- The backend logs and forwards upstream only request ids of 1 to 200 printable ASCII
-- characters (observe.py); Envoy returns the client's id as it is. A longer or unprintable id
-- is cut to what the backend takes, so that the id a client gets back is the one in the logs.
local MAX_REQUEST_ID_CHARS = 200

local function clean_request_id(headers)
  local id = headers:get("x-request-id")
  if id == nil then
    return
  end
  local clean = string.sub((string.gsub(id, "[^\32-\126]", "")), 1, MAX_REQUEST_ID_CHARS)
  if clean ~= id and clean ~= "" then
    headers:replace("x-request-id", clean)
  end
end

-- keys.bearer_token's rule, `^\s*Bearer\s+(\S+)\s*$` ignoring case, on what Python's `\s`
-- means in ASCII: %s and the separators 0x1C-0x1F. A value with other bytes may hold Unicode
-- whitespace, which only the backend judges: it goes on, so that nothing the backend would
-- accept is refused here.
local SPACE = "[%s\28-\31]"
local BEARER = "^" .. SPACE .. "*[Bb][Ee][Aa][Rr][Ee][Rr]" .. SPACE .. "+[^%s\28-\31]+"
  .. SPACE .. "*$"

local function lacks_key(authorization)
  if authorization == nil then
    return true
  end
  if string.find(authorization, "[\128-\255]") then
    return false
  end
  return string.find(authorization, BEARER) == nil
end

-- Where envoy_on_request notes, for envoy_on_response, that the request is a HEAD: an answer
-- to it must have headers only, and Envoy sends whatever body this filter sets (an HTTP/2
-- client then fails the whole connection). No route serves HEAD, so it is always an error.
local NOTES = "envoy.filters.http.lua"

-- True, with the headers made ready to go alone, for an answer to HEAD. Its Content-Length
-- goes: it counts Envoy's own text or the empty refusal, not the body a GET would get, which
-- HTTP requires of a Content-Length on an answer to HEAD.
local function headers_only(handle, headers)
  local notes = handle:streamInfo():dynamicMetadata():get(NOTES)
  if notes == nil or notes["head"] == nil then
    return false
  end
  headers:remove("content-length")
  return true
end

function envoy_on_request(handle)
  local headers = handle:headers()
  -- Native gRPC passes untouched: the backend refuses a call without a key on its headers.
  if is_grpc(headers:get("content-type")) then
    return
  end
  clean_request_id(headers)
  local method = headers:get(":method")
  local head = method == "HEAD"
  if head then
    handle:streamInfo():dynamicMetadata():set(NOTES, "head", true)
  end
  -- The backend reads the first value too (servicer.authorization_of). The route's metadata
  -- is read only for a request without a key: it costs a conversion per request. A CORS
  -- preflight never carries credentials; no route serves OPTIONS anyway.
  if method ~= "OPTIONS" and lacks_key(headers:getAtIndex("authorization", 0)) then
    local refusal = handle:metadata():get("missing_key")
    if refusal ~= nil then
      -- Shaped as the backend's errors are, for envoy_on_response, which sees this reply too.
      handle:respond({[":status"] = refusal["status"], ["x-http-status"] = refusal["status"],
        ["x-openai-error"] = refusal["body"]}, head and "" or refusal["body"])
      return
    end
  end
  local unwanted = {}
  for name, _ in pairs(headers) do
    if string.sub(name, 1, 5) == "grpc-" or string.sub(name, -4) == "-bin" then
      unwanted[#unwanted + 1] = name
    elseif string.sub(name, 1, 1) ~= ":" and not string.match(name, "^[%l%d_%.%-]+$") then
      -- Legal in HTTP (e.g. "x-a'b", "x!"), but not a gRPC metadata key: the backend would
      -- refuse the whole call with a 500.
      unwanted[#unwanted + 1] = name
    end
  end
  for _, name in ipairs(unwanted) do
    headers:remove(name)
  end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  -- A native gRPC response always has HTTP status 200 (errors travel in grpc-status). A
  -- transcoded error keeps the application/grpc type but gets a mapped status such as 401.
  if is_grpc(headers:get("content-type")) and headers:get(":status") == "200" then
    return
  end
  local openai_error = headers:get("x-openai-error")
  local wanted_status = headers:get("x-http-status")
  local grpc_message = headers:get("grpc-message")
  headers:remove("x-openai-error")
  headers:remove("x-http-status")
  headers:remove("grpc-status")
  headers:remove("grpc-message")
  headers:remove("grpc-accept-encoding")

  if openai_error ~= nil then
    -- The backend's own error: it chose the status and wrote the body.
    if wanted_status ~= nil then
      headers:replace(":status", wanted_status)
    end
    headers:replace("content-type", "application/json")
    if headers_only(handle, headers) then
      return
    end
    handle:body(true):setBytes(openai_error)
    return
  end

  local status = tonumber(headers:get(":status")) or 500
  if status < 400 then
    return
  end
  if status == 499 then
    -- A bare CANCELLED: the backend's server refused the call as it stopped (a client that
    -- went away gets no answer at all). Retryable, unlike nginx's "client closed request".
    status = 503
    headers:replace(":status", "503")
  end
  -- Envoy's own reply (unknown path, body too large, backend down, a typed request whose JSON
  -- the transcoder could not parse) or a bare gRPC status. Headers first: reading the body
  -- ends their scope.
  headers:replace("content-type", "application/json")
  if headers_only(handle, headers) then
    return
  end
  local body = handle:body(true)
  local message = LOCAL_MESSAGES[status]
  if message == nil then
    local text = body:getBytes(0, body:length())
    if grpc_message ~= nil and grpc_message ~= "" then
      message = percent_decode(grpc_message)
    elseif text ~= nil and text ~= "" then
      message = text
    else
      message = "Request failed with HTTP status " .. status .. "."
    end
  end
  local error_type = ERROR_TYPES[status] or "api_error"
  body:setBytes('{"error":{"message":' .. json_string(message)
    .. ',"type":"' .. error_type .. '","param":null,"code":' .. status .. '}}')
end
