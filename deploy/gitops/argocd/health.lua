-- Argo CD health of a PromptOptimizationJob (promptopt.dev/v1alpha1), read from the conditions the operator
-- keeps for kstatus (see docs/gitops.md):
--   Ready=True                      -> Healthy      the job succeeded
--   Stalled=True, phase Cancelled   -> Suspended    stopped on purpose (spec.cancel): not a fault, not done
--   Stalled=True                    -> Degraded     the job failed
--   anything else                   -> Progressing  queued, pending or running, however long it runs
-- The message is the job's status.message, plus a warning when its spec changed after it started.
local hs = {status = "Progressing", message = "waiting for the operator to take the job"}
if obj.status == nil then
  return hs
end
local conditions = {}
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    conditions[condition.type] = condition
  end
end
local function holds(kind)
  return conditions[kind] ~= nil and conditions[kind].status == "True"
end
if obj.status.message ~= nil then
  hs.message = obj.status.message
end
local applied = conditions["SpecApplied"]
if applied ~= nil and applied.status == "False" and applied.message ~= nil then
  hs.message = hs.message .. " (" .. applied.message .. ")"
end
if holds("Ready") then
  hs.status = "Healthy"
elseif holds("Stalled") then
  if obj.status.phase == "Cancelled" then
    hs.status = "Suspended"
  else
    hs.status = "Degraded"
  end
end
return hs
