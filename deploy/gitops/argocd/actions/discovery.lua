-- The actions Argo CD offers on a PromptOptimizationJob: cancel, until the job has finished or is cancelling.
local actions = {}
local finished = false
if obj.status ~= nil then
  local phase = obj.status.phase
  finished = phase == "Succeeded" or phase == "Failed" or phase == "Cancelled"
end
local cancelling = obj.spec ~= nil and obj.spec.cancel == true
actions["cancel"] = {["disabled"] = finished or cancelling, ["iconClass"] = "fa fa-fw fa-stop"}
return actions
